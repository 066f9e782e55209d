"""Distributed training: Ray Train + DeepSpeed ZeRO around the local training loop.

    unimat train --config cluster/jobs/train_tiny_ray_cpu.yaml        # trainer: ray
    from unimat_dist.distributed import run_ray_training

The ``distributed`` config section lives with the rest of the training config
(``unimat_dist.training.distributed_config``); this package imports Ray and DeepSpeed, loaded on use.
"""
from unimat_dist.training.distributed_config import DistributedConfig, FailureInjection


def run_ray_training(cfg, **kwargs):
    from .launcher import run_ray_training as _run

    return _run(cfg, **kwargs)


__all__ = ["DistributedConfig", "FailureInjection", "run_ray_training"]
