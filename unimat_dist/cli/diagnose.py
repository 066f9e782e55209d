"""``unimat diagnose``: the diagnosis ladder of a training recipe (``unimat_dist/diagnose.py``).

    unimat diagnose --config cluster/jobs/results/perov5_transformer_cpu.yaml --sizes 1,16,256,all \
        --steps 2000 --out out/diagnose/perov5_transformer
    unimat diagnose --config cluster/jobs/results/perov5_tiny_cpu.yaml --sizes 16,all --steps 2000 \
        --out out/diagnose/perov5_unet train.num_threads=2
    unimat diagnose --checkpoint checkpoints/perov5_transformer_cpu.pt --out out/diagnose/released
"""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("diagnose", help="overfit 1 -> 16 -> 256 -> all crystals and measure what is learned")
    p.add_argument("--config", help="training config (YAML) of the recipe to diagnose")
    p.add_argument("--checkpoint", help="measure this trained model instead (no training; its stored config's data)")
    p.add_argument("--sizes", default="1,16,256,all", help="comma-separated rungs: numbers of training crystals or 'all'")
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps per rung")
    p.add_argument("--samples", type=int, default=64, help="unconditional samples per rung")
    p.add_argument("--sample-steps", type=int, default=50, help="DDIM steps of those samples")
    p.add_argument("--out", default="out/diagnose", help="folder for ladder.json / ladder.md / ladder.png")
    p.add_argument("overrides", nargs="*", help="config overrides section.key=value")
    p.set_defaults(func=run)


def run(args) -> int:
    from unimat_dist.diagnose import measure_checkpoint, run_ladder

    out = Path(args.out)
    if args.checkpoint:
        measure_checkpoint(args.checkpoint, out, args.samples, args.sample_steps, overrides=args.overrides)
        print((out / "ladder.md").read_text())
        return 0
    if not args.config:
        raise ValueError("give --config (train and measure a ladder) or --checkpoint (measure a trained model)")
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    for s in sizes:
        if s != "all" and (not s.isdigit() or int(s) < 1):
            raise ValueError(f"--sizes: {s!r} is neither a positive number nor 'all'")
    if args.steps < 1:
        raise ValueError("--steps must be >= 1")
    run_ladder(args.config, list(args.overrides), sizes, args.steps, out, samples=args.samples,
               sample_steps=args.sample_steps)
    print((out / "ladder.md").read_text())
    print(f"wrote {out / 'ladder.json'}, {out / 'ladder.md'}, {out / 'ladder.png'}")
    return 0
