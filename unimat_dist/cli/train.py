"""``unimat train``: train a UniMat diffusion model from a YAML config (``trainer: local`` runs in this process,
``trainer: ray`` on Ray Train with progress lines on this console).

    unimat train --config cluster/jobs/train_tiny_cpu.yaml
    unimat train --config cluster/jobs/train_tiny_cpu.yaml train.steps=100 out_dir=out/t100 optim.lr=5e-4
    unimat train --config cluster/jobs/train_perov5_small.yaml train.resume=never
    unimat train --config cluster/jobs/train_tiny_ray_cpu.yaml --print-config      # the resolved config (YAML)
    unimat train --config cluster/jobs/train_tiny_ray_cpu.yaml --dry-run           # check it, train nothing

A run writes <out_dir>/config.yaml, metrics.jsonl, loss.png and checkpoints/step_*/{train_state.pt,
inference.pt}; running the same command again resumes from the newest checkpoint.

``--dry-run`` checks world size, batch divisibility, data sources and storage reachability before any
data loads (see ``unimat_dist.launch.preflight``) and fails with one line naming the config key.
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a UniMat diffusion model (config YAML + key=value overrides)")
    p.add_argument("--config", required=False, help="YAML config (see cluster/jobs/); defaults apply without it")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (YAML, overrides applied) and exit without training")
    p.add_argument("--dry-run", action="store_true",
                   help="check world size, batch divisibility, data sources and storage, then exit without training")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.steps=100")
    p.set_defaults(func=run)


def print_config(cfg) -> None:
    from unimat_dist.config import config_yaml

    text = config_yaml(cfg)
    if cfg.trainer == "ray":
        from unimat_dist.training.distributed_config import run_name_of, storage_of

        text += (f"# resolved: run name {run_name_of(cfg)}, run storage {storage_of(cfg)}, "
                 f"world size(s) {cfg.distributed.worker_counts()}\n")
    print(text, end="", flush=True)


def run(args) -> int:
    import json

    from unimat_dist.training import load_train_config

    cfg = load_train_config(args.config, args.overrides)
    if args.print_config:
        print_config(cfg)
    if args.dry_run:
        from unimat_dist.launch.preflight import run_preflight

        for line in run_preflight(cfg):
            print(f"ok  {line}", flush=True)
        print("dry run: the config passes every check (nothing was trained)", flush=True)
    if args.print_config or args.dry_run:
        return 0
    from unimat_dist.launch import run_training

    result = run_training(cfg)
    print(json.dumps({
        "steps": result.steps,
        "first_loss": result.first_loss,
        "last_loss": result.last_loss,
        "val_loss_ema": result.val_loss,
        "inference_checkpoint": result.inference_checkpoint,
    }, indent=1))
    return 0
