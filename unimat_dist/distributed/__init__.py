"""Distributed training: Ray Train + DeepSpeed ZeRO around the local training loop.

    unimat train --config cluster/jobs/train_tiny_ray_cpu.yaml        # trainer: ray
    from unimat_dist.distributed import run_ray_training

Only ``config`` is imported eagerly (the training config embeds its section); the rest imports Ray and
DeepSpeed and is loaded on use.
"""
from .config import DistributedConfig, FailureInjection


def run_ray_training(cfg, **kwargs):
    from .launcher import run_ray_training as _run

    return _run(cfg, **kwargs)


__all__ = ["DistributedConfig", "FailureInjection", "run_ray_training"]
