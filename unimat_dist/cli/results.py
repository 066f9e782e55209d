"""``unimat results``: the paper-style results table of trained models (see unimat_dist/recipes/results.py).

    # sample 10,000 crystals from a trained model and evaluate them (proxy metrics; CHGNet on a subsample)
    unimat results evaluate --checkpoint out/perov5_small/checkpoints --dataset perov_5 \
        --num 10000 --energy-samples 500 --out results/perov5_small
    # the markdown table beside the published numbers, and the model-size ablation plot
    unimat results table results/*/result.json --out results/table.md --ablation results/ablation.png
    # COV and position error of a run against its training hours (from its quality checks)
    unimat results curve --run out/results/perov5_transformer_cpu --out results/cpu/perov5_transformer_cpu/curve.png
"""
from __future__ import annotations

import argparse

from .sample import on_off, parse_restart


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("results", help="evaluate trained models like the paper and tabulate them beside Table 1")
    what = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    e = what.add_parser("evaluate", help="sample N unconditional crystals and evaluate them")
    e.add_argument("--checkpoint", required=True, help="inference.pt, checkpoint/run directory or fsspec URI")
    e.add_argument("--dataset", required=True, help="perov_5 | carbon_24 | mp_20")
    e.add_argument("--out", required=True, help="folder for samples.extxyz, result.json and the report")
    e.add_argument("--num", type=int, default=10_000, help="unconditional samples (the paper: 10,000)")
    e.add_argument("--label", help="row label (default: the --out folder name)")
    e.add_argument("--sampler", choices=("ddim", "ddpm"), default=None,
                   help="default: the checkpoint's sampling defaults, else ddim (so for the next three)")
    e.add_argument("--steps", type=int, default=None, help="denoising steps (default 100 for DDIM, T for DDPM)")
    e.add_argument("--eta", type=float, default=None, help="DDIM stochasticity (0 = deterministic, 1 = DDPM's noise)")
    e.add_argument("--noise-scale", type=float, default=None, help="multiplies the added noise (< 1: lower temperature)")
    e.add_argument("--restart", type=parse_restart, default=None, metavar="T:K",
                   help="restart sampling: noise to timestep T, K deterministic steps back ('none': off)")
    e.add_argument("--autoguidance", type=float, default=None, metavar="W",
                   help="weight of the checkpoint's guide network (default: the checkpoint's; 0: off)")
    e.add_argument("--distinct-compositions", choices=("on", "off"), default=None,
                   help="draw the run's compositions from the prior without repeats (default: the checkpoint's)")
    e.add_argument("--batch-size", type=int, default=500)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--workers", type=int, help="evaluation processes (default: all CPUs)")
    e.add_argument("--energy-samples", type=int, default=0,
                   help="valid samples relaxed with CHGNet for the stable/metastable rates (0: skip)")
    e.add_argument("--relax-steps", type=int, default=300)
    e.add_argument("--property-emd", action="store_true", help="property EMD with CHGNet energies (slow)")
    e.add_argument("--conditional", type=int, default=0,
                   help="test compositions for the conditional protocol against the AIRSS-like baseline (0: skip)")
    e.add_argument("--per-composition", type=int, default=10, help="conditioned samples / AIRSS structures each")
    e.add_argument("--csp", action="store_true",
                   help="also the CSP protocol: one exact-count sample per test crystal, match rate and RMSE")
    e.add_argument("--limit-csp", type=int, default=None, help="CSP on the first N test crystals only")
    e.add_argument("--limit-reference", type=int, help="first N test crystals only (quick looks)")
    e.add_argument("--limit-train", type=int, help="first N training crystals for novelty (quick looks)")
    e.set_defaults(func=run_evaluate)
    t = what.add_parser("table", help="markdown table of result.json files beside the published numbers")
    t.add_argument("results", nargs="+", help="result.json files written by `unimat results evaluate`")
    t.add_argument("--out", required=True, help="markdown file")
    t.add_argument("--ablation", help="PNG: validity and COV against parameter count (needs >= 2 model sizes)")
    t.set_defaults(func=run_table)
    c = what.add_parser("curve", help="learning curve of a run: sample quality and position error vs training hours")
    c.add_argument("--run", required=True, help="run directory (with metrics.jsonl)")
    c.add_argument("--out", required=True, help="PNG")
    c.add_argument("--title", default=None)
    c.set_defaults(func=run_curve)


def run_evaluate(args) -> int:
    import json
    from pathlib import Path

    from unimat_dist.recipes.results import RunOptions, evaluate_run

    r = evaluate_run(RunOptions(
        checkpoint=args.checkpoint, dataset=args.dataset, out=Path(args.out), num=args.num, sampler=args.sampler,
        steps=args.steps, eta=args.eta, noise_scale=args.noise_scale, restart=args.restart,
        autoguidance=args.autoguidance, distinct_compositions=on_off(args.distinct_compositions),
        batch_size=args.batch_size, seed=args.seed, workers=args.workers,
        energy_samples=args.energy_samples, relax_steps=args.relax_steps, property_emd=args.property_emd,
        limit_reference=args.limit_reference, limit_train=args.limit_train, label=args.label,
        conditional=args.conditional, per_composition=args.per_composition, csp=args.csp, limit_csp=args.limit_csp,
    ))
    keys = ("struct_validity", "comp_validity", "cov_recall", "cov_precision", "emd_density", "emd_num_elements",
            "unique_fraction", "novelty")
    print(json.dumps({k: r["proxy"].get(k) for k in keys} | {"samples_per_s": r["sampling"]["samples_per_s"]}, indent=2))
    return 0


def run_curve(args) -> int:
    from pathlib import Path

    from unimat_dist.training.plots import plot_learning_curve

    path = plot_learning_curve(Path(args.run) / "metrics.jsonl", Path(args.out), args.title)
    if path is None:
        raise ValueError(f"{args.run}/metrics.jsonl has no quality checks (train.quality_every) to plot")
    print(f"wrote {path}")
    return 0


def run_table(args) -> int:
    from pathlib import Path

    from unimat_dist.recipes.results import write_table

    print(write_table(args.results, Path(args.out), Path(args.ablation) if args.ablation else None))
    return 0
