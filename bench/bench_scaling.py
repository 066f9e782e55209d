"""Scaling check (the paper's Fig. 4): three model sizes on one data set, the same CPU budget each.

    python -m bench scaling --config cluster/jobs/results/perov5_transformer_cpu.yaml --presets tiny,small,base \
        --minutes 5 --num 500

Each preset is timed for a few steps, given the number of steps that fills ``--minutes`` of training on
this machine (so the learning-rate schedule runs to its end), trained from scratch, then sampled
(``--num`` unconditional DDIM-50 crystals) and scored with the CDVAE-exact proxy metrics against the test
split. Prints validity and COV per parameter count with the ratios to the smallest model, and writes
bench/results/scaling_<dataset>.json and .png (validity and COV against parameters).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def _rate(cfg_path: str, overrides: list[str], probe_steps: int) -> float:
    """Training steps per second of a config on this machine (a short throw-away run)."""
    from unimat_dist.training import load_train_config
    from unimat_dist.training.run import build_local_trainer

    cfg = load_train_config(cfg_path, [*overrides, f"train.steps={probe_steps}", "train.resume=never",
                                       "train.quality_every=0", "train.val_every=0", "train.ckpt_every=0",
                                       "train.progress=false"])
    trainer = build_local_trainer(cfg)
    trainer.checkpoints = None
    trainer.train_step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(probe_steps):
        trainer.train_step()
    return probe_steps / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="cluster/jobs/results/perov5_transformer_cpu.yaml")
    ap.add_argument("--presets", default="tiny,small,base")
    ap.add_argument("--minutes", type=float, default=5.0, help="training budget per model")
    ap.add_argument("--num", type=int, default=500, help="unconditional samples per model")
    ap.add_argument("--probe-steps", type=int, default=30)
    ap.add_argument("--out-dir", default="out/bench_scaling")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    from unimat_dist.datasets import resolve_split
    from unimat_dist.evaluation.proxy import proxy_evaluation
    from unimat_dist.evaluation.structures_io import StructureRecord
    from unimat_dist.inference import load_generator
    from unimat_dist.launch import run_training
    from unimat_dist.training import load_train_config

    rows = []
    for preset in args.presets.split(","):
        base = [f"model.preset={preset}", f"out_dir={args.out_dir}/{preset}"]
        rate = _rate(args.config, base, args.probe_steps)
        steps = max(int(rate * args.minutes * 60), 50)
        cfg = load_train_config(args.config, [*base, f"train.steps={steps}", "train.resume=never",
                                              f"train.val_every={steps}", f"train.ckpt_every={steps}",
                                              f"train.quality_every={max(steps // 4, 1)}", "train.progress=false"])
        t0 = time.perf_counter()
        result = run_training(cfg)
        train_s = time.perf_counter() - t0
        g = load_generator(result.inference_checkpoint, device="cpu")
        params = sum(p.numel() for p in g.diffusion.denoiser.parameters())
        out = g.sample(args.num, sampler="ddim", steps=50, seed=0, batch_size=args.num)
        recs = [StructureRecord(f"{preset}_{i}", s, error=None if s is not None else "nothing decoded")
                for i, s in enumerate(out)]
        m = proxy_evaluation(recs, str(resolve_split(cfg.data.dataset, "test").path), cfg.data.dataset,
                             uniqueness=False, novelty=False, progress=False, n_samples=args.num, workers=2).metrics
        row = {"preset": preset, "params": params, "steps": steps, "steps_per_s": rate, "train_seconds": train_s,
               **{k: m.get(k) for k in ("struct_validity", "comp_validity", "cov_recall", "cov_precision",
                                        "emd_density", "emd_num_elements")}}
        rows.append(row)
        print(f"{preset:<6} {params / 1e6:6.2f}M params  {steps:6d} steps in {train_s / 60:4.1f} min  struct "
              f"{100 * row['struct_validity']:5.1f}%  comp {100 * row['comp_validity']:5.1f}%  COV-R "
              f"{100 * row['cov_recall']:5.1f}%  COV-P {100 * row['cov_precision']:5.1f}%", flush=True)
    base = rows[0]
    for r in rows:
        r["cov_recall_ratio_vs_smallest"] = r["cov_recall"] / base["cov_recall"] if base["cov_recall"] else None
        r["params_ratio_vs_smallest"] = r["params"] / base["params"]
    dataset = load_train_config(args.config).data.dataset
    summary = {"config": args.config, "dataset": dataset, "minutes_per_model": args.minutes, "num": args.num,
               "machine": "CPU, torch threads " + str(torch.get_num_threads()), "rows": rows}
    out = Path(args.out) if args.out else HERE / "results" / f"scaling_{dataset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    _plot(summary, out.with_suffix(".png"))
    print(f"wrote {out}")
    return 0


def _plot(summary, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = sorted(summary["rows"], key=lambda r: r["params"])
    x = [r["params"] for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("struct_validity", "struct. valid"), ("comp_validity", "comp. valid")):
        ax[0].plot(x, [100 * r[key] for r in rows], "o-", label=label)
    for key, label in (("cov_recall", "COV-R"), ("cov_precision", "COV-P")):
        ax[1].plot(x, [100 * r[key] for r in rows], "o-", label=label)
    for r in rows:
        ax[1].annotate(f"{r['preset']} ({r['steps']} steps)", (r["params"], 100 * r["cov_recall"]), fontsize=7,
                       textcoords="offset points", xytext=(3, -10))
    for a, title in zip(ax, ("validity (%)", "coverage (%)")):
        a.set_xscale("log")
        a.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # the minor labels overlap
        a.set_xlabel("parameters")
        a.set_title(title)
        a.grid(True, alpha=0.3)
        a.legend(fontsize=8)
    fig.suptitle(f"{summary['dataset']}: model size at {summary['minutes_per_model']:g} CPU-minutes each "
                 f"({summary['num']} samples)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
