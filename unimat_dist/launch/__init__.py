"""``run_training(cfg)``: one training run, in this process (``trainer: local``) or on Ray
(``trainer: ray``: Ray Train workers + DeepSpeed around the same loop).

    from unimat_dist.launch import run_training
    from unimat_dist.training import load_train_config
    result = run_training(load_train_config("cluster/jobs/train_tiny_cpu.yaml", ["train.steps=100"]))

It sits above both trainers so that neither imports the other's package: ``distributed`` depends on
``training``, never the reverse (the import direction is checked by ``tests/test_architecture.py``).
"""
from __future__ import annotations

from unimat_dist.training import TrainConfig, TrainResult


def run_training(cfg: TrainConfig) -> TrainResult:
    """Train ``cfg`` with the trainer it names; returns the run's ``TrainResult``."""
    if cfg.trainer == "ray":
        from unimat_dist.distributed import run_ray_training

        return run_ray_training(cfg)
    from unimat_dist.training import train_local

    return train_local(cfg)
