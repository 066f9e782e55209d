"""``unimat quickstart``: the main job, end to end on the bundled data (what ``make quickstart`` runs).

ingest (Ray Data) -> train (Ray Train + DeepSpeed) -> sample (Ray Serve over HTTP, Ray Data batch job)
-> evaluate (CDVAE proxy metrics, CHGNet energies) -> report with plots in ``--out`` (README.md,
metrics.json, PNGs). About 12 minutes on a 2-core CPU; see unimat_dist/recipes/quickstart.py.

    unimat quickstart --out out/quickstart [--train-steps 900]
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="run the end-to-end main job on the bundled data")
    p.add_argument("--out", default="out/quickstart", help="report folder")
    p.add_argument("--train-steps", type=int, default=None,
                   help="optimizer steps (default: cluster/jobs/quickstart_train.yaml's)")
    p.add_argument("--unconditional", type=int, default=1000,
                   help="unconditional crystals to generate (COV-R grows with the count; see docs)")
    p.add_argument("--compositions", type=int, default=20, help="test compositions for conditioned generation")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from unimat_dist.recipes.quickstart import QuickstartOptions, run_quickstart

    run_quickstart(QuickstartOptions(out=Path(args.out), train_steps=args.train_steps,
                                     unconditional=args.unconditional, compositions=args.compositions, seed=args.seed))
    return 0
