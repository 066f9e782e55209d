"""``unimat train``: train a UniMat diffusion model from a YAML config (``trainer: local`` runs in this process).

    unimat train --config cluster/jobs/train_tiny_cpu.yaml
    unimat train --config cluster/jobs/train_tiny_cpu.yaml train.steps=100 out_dir=out/t100 optim.lr=5e-4
    unimat train --config cluster/jobs/train_perov5_small.yaml train.resume=never

A run writes <out_dir>/config.yaml, metrics.jsonl, loss.png and checkpoints/step_*/{train_state.pt,
inference.pt}; running the same command again resumes from the newest checkpoint.
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a UniMat diffusion model (config YAML + key=value overrides)")
    p.add_argument("--config", required=False, help="YAML config (see cluster/jobs/); defaults apply without it")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.steps=100")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from unimat_dist.training import load_train_config, run_training

    cfg = load_train_config(args.config, args.overrides)
    result = run_training(cfg)
    print(json.dumps({
        "steps": result.steps,
        "first_loss": result.first_loss,
        "last_loss": result.last_loss,
        "val_loss_ema": result.val_loss,
        "inference_checkpoint": result.inference_checkpoint,
    }, indent=1))
    return 0
