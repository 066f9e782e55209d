"""Sampling cost at equal quality: DDIM with k steps against DDPM with all T = 1000 steps, on a released model.

    python -m bench sampling --checkpoint checkpoints/perov5_transformer_cpu.pt --dataset perov_5 --num 1000
    python -m bench sampling --checkpoint checkpoints/carbon24_transformer_cpu.pt --dataset carbon_24

For every sampler setting the same N unconditional crystals (same seed, so the same drawn compositions)
are generated and scored with the CDVAE-exact proxy metrics against the data set's test split. The
baseline is DDPM-1000 in the same process; the benchmark prints, per DDIM k, COV-R/COV-P/validity, the
wall time and its speed-up over DDPM-1000, and names the smallest k whose COV-R and COV-P are both
within 1 point of DDPM-1000's. ``--variants 0:1,1:0.3`` runs every k once per DDIM (η, noise scale λ)
pair (η = 1: the DDPM posterior's noise on the respaced steps; λ multiplies that noise, a sampling
temperature), and ``--ddpm-noise-scale`` sets the baseline's λ: on Carbon-24 the stochastic sampler at a
lower temperature is the precise one. ``--restart T:K`` adds a restart pass to every row (K more network
evaluations each), and a checkpoint that carries a guide network samples every row autoguided
(``--autoguidance 0``: without).
Results: bench/results/sampling_<dataset>.json (+ .png).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--dataset", required=True, help="perov_5 | carbon_24 | mp_20")
    ap.add_argument("--reference", default="test",
                    help="split the samples are scored against: test (reporting) or the training data (choosing a "
                         "sampler setting without looking at the test split: val for the bundled data sets)")
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--ks", default="5,10,20,50,100,200", help="DDIM step counts")
    ap.add_argument("--variants", default="0:1", help="DDIM η:noise-scale pairs, each run with every k")
    ap.add_argument("--ddpm-steps", type=int, default=1000)
    ap.add_argument("--ddpm-noise-scale", type=float, default=1.0, help="the DDPM baseline's noise scale λ")
    ap.add_argument("--restart", default=None, metavar="T:K",
                    help="a restart pass after every row's chain (default: none; the Carbon-24 release uses 100:20)")
    ap.add_argument("--autoguidance", type=float, default=None,
                    help="weight of the checkpoint's guide network for every row (default: the checkpoint's; 0: off)")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from unimat_dist.cli.sample import parse_restart
    from unimat_dist.datasets import resolve_split
    from unimat_dist.evaluation.proxy import proxy_evaluation
    from unimat_dist.evaluation.structures_io import StructureRecord
    from unimat_dist.inference import load_generator

    g = load_generator(args.checkpoint, device="cpu", precision="fp32", autoguidance=args.autoguidance)
    ag = g.meta.get("autoguidance")
    if ag:
        print(f"every row autoguided: weight {ag['weight']:g} against the step-{ag['guide_step']} network")
    test = str(resolve_split(args.dataset, args.reference).path)
    variants = [tuple(float(x) for x in v.split(":")) for v in args.variants.split(",")]
    restart = parse_restart(args.restart) if args.restart else None
    settings = [("ddpm", args.ddpm_steps, 0.0, args.ddpm_noise_scale)] + [
        ("ddim", int(k), eta, lam) for eta, lam in variants for k in args.ks.split(",")]
    rows = []
    for sampler, k, eta, lam in settings:
        t0 = time.perf_counter()
        out = g.sample(args.num, sampler=sampler, steps=k, eta=eta, noise_scale=lam, restart=restart, seed=args.seed,
                       batch_size=args.batch_size)
        secs = time.perf_counter() - t0
        recs = [StructureRecord(f"{sampler}{k}_{i}", s, error=None if s is not None else "nothing decoded")
                for i, s in enumerate(out)]
        m = proxy_evaluation(recs, test, args.dataset, uniqueness=False, novelty=False, progress=False,
                             n_samples=args.num, workers=2).metrics
        row = {"sampler": sampler, "steps": k, "eta": eta, "noise_scale": lam, "seconds": secs,
               "struct_validity": m["struct_validity"],
               "comp_validity": m["comp_validity"], "cov_recall": m["cov_recall"], "cov_precision": m["cov_precision"],
               "emd_density": m.get("emd_density"), "emd_num_elements": m.get("emd_num_elements")}
        rows.append(row)
        print(f"{sampler}-{k:<5d} η={eta:g} λ={lam:g} {secs:7.1f}s  struct {100 * row['struct_validity']:5.1f}%  "
              f"comp "
              f"{100 * row['comp_validity']:5.1f}%  COV-R {100 * row['cov_recall']:5.1f}%  COV-P "
              f"{100 * row['cov_precision']:5.1f}%", flush=True)
    base = rows[0]
    for r in rows:
        r["speedup_vs_ddpm"] = base["seconds"] / r["seconds"]
    ok = [r for r in rows[1:] if r["cov_recall"] >= base["cov_recall"] - 0.01
          and r["cov_precision"] >= base["cov_precision"] - 0.01]
    best = min(ok, key=lambda r: r["steps"]) if ok else None
    summary = {
        "checkpoint": args.checkpoint, "dataset": args.dataset, "reference": args.reference, "num": args.num, "threads": args.threads,
        "machine": f"{torch.get_num_threads()} torch threads, CPU", "baseline": f"ddpm-{args.ddpm_steps}"
        + (f" λ={args.ddpm_noise_scale:g}" if args.ddpm_noise_scale != 1 else "")
        + (f" restart {restart[0]}:{restart[1]}" if restart else "") + (f" AG={ag['weight']:g}" if ag else ""),
        "autoguidance": ag,  # every row's, or None
        "restart": list(restart) if restart else None,  # every row's, or None
        "rows": rows,
        "smallest_ddim_within_1pt": None if best is None else {"steps": best["steps"],
                                                               "eta": best["eta"],
                                                               "noise_scale": best["noise_scale"],
                                                               "speedup_vs_ddpm": best["speedup_vs_ddpm"]},
    }
    print(f"\nbaseline DDPM-{args.ddpm_steps}: COV-R {100 * base['cov_recall']:.1f}% COV-P "
          f"{100 * base['cov_precision']:.1f}% in {base['seconds']:.1f}s")
    if best:
        print(f"smallest DDIM k within 1 point of it on both COVs: k = {best['steps']} "
              f"(η = {best['eta']:g}, λ = {best['noise_scale']:g}), "
              f"{best['speedup_vs_ddpm']:.1f}x faster")
    else:
        print("no DDIM setting is within 1 point of DDPM on both COVs")
    out = Path(args.out) if args.out else HERE / "results" / f"sampling_{args.dataset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    _plot(summary, out.with_suffix(".png"))
    print(f"wrote {out}")
    return 0


def _plot(summary, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    base, ddim = rows[0], rows[1:]
    groups: dict[tuple[float, float], list[dict]] = {}  # DDIM rows per (η, λ) variant, in k order
    for r in ddim:
        groups.setdefault((r.get("eta", 0.0), r.get("noise_scale", 1.0)), []).append(r)
    styles = dict(zip(sorted(groups), ("o-", "s:", "^-.", "v--")))
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for key, label, c in (("cov_recall", "COV-R", "C0"), ("cov_precision", "COV-P", "C1"),
                          ("struct_validity", "struct. valid", "C2")):
        for (eta, lam), style in styles.items():
            sel = groups[eta, lam]
            ax[0].plot([r["steps"] for r in sel], [100 * r[key] for r in sel], style, color=c,
                       label=f"DDIM η={eta:g} λ={lam:g} {label}")
        ax[0].axhline(100 * base[key], color=c, ls="--", lw=1, label=f"{summary['baseline']} {label}")
    ax[0].set_xscale("log")
    ax[0].set_xlabel("DDIM steps k")
    ax[0].set_ylabel("%")
    ax[0].legend(fontsize=7)
    ax[0].grid(True, alpha=0.3)
    for (eta, lam), style in styles.items():
        sel = groups[eta, lam]
        ax[1].plot([r["steps"] for r in sel], [r["seconds"] for r in sel], style, label=f"DDIM η={eta:g} λ={lam:g}")
    ax[1].axhline(base["seconds"], color="k", ls="--", label=summary["baseline"])
    ax[1].set_xscale("log")
    ax[1].set_yscale("log")
    ax[1].set_xlabel("DDIM steps k")
    ax[1].set_ylabel(f"seconds for {summary['num']} crystals")
    ax[1].legend(fontsize=8)
    ax[1].grid(True, alpha=0.3)
    fig.suptitle(f"{summary['dataset']}: sampling cost at equal quality")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
