"""A training run in this process (``trainer: local``): ``train_local(cfg)``.

``unimat_dist.launch.run_training(cfg)`` is the entry point that also runs ``trainer: ray``
(``unimat_dist.distributed``, which wraps the same loop); this package does not import it.

    unimat train --config cluster/jobs/train_tiny_cpu.yaml train.steps=200
    python -c "from unimat_dist.launch import run_training; from unimat_dist.training import load_train_config; run_training(load_train_config('x.yaml'))"
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from unimat_dist.config import config_yaml, save_config

from .checkpoint import CheckpointManager, StepFolders
from .config import TrainConfig
from .ema import EMA
from .engine import LocalEngine, build_optimizer, resolve_autocast, resolve_device
from .loop import Trainer, TrainResult
from .setup import make_train_source, prepare_run

log = logging.getLogger(__name__)


def build_local_trainer(cfg: TrainConfig) -> Trainer:
    """A ``Trainer`` on one device with the plain PyTorch engine and the in-memory data source."""
    t = cfg.train
    from unimat_dist.cpu_threads import configure

    configure(t.num_threads or None, what="train")
    device = resolve_device(t.device)
    amp = resolve_autocast(t.precision, device)
    if amp is not None and device.type == "cpu":
        log.warning("bf16 autocast on CPU is slow on most CPUs; precision=fp32 is the CPU default")
    setup = prepare_run(cfg, device=device)
    micro, accum = t.grad_accum_steps(world_size=1)
    o = cfg.optim
    diffusion = setup.diffusion
    optimizer = build_optimizer(
        diffusion.denoiser, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay, device=device
    )
    forward = torch.compile(diffusion) if t.compile else None
    engine = LocalEngine(diffusion, optimizer, grad_accum=accum, grad_clip=o.grad_clip, autocast_dtype=amp, forward=forward)
    run_dir = Path(cfg.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    log.info("config:\n%s", config_yaml(cfg))
    for note in setup.notes:
        log.info("data: %s", note)
    log.info(
        "%s; %d train / %d val crystals; model %s: %.2fM parameters; device %s%s; micro-batch %d x %d accumulation",
        setup.spec.describe(), setup.num_train, len(setup.val_data or []), cfg.model.preset,
        diffusion.denoiser.num_params() / 1e6, device, " (bf16 autocast)" if amp else "", micro, accum,
    )
    return Trainer(
        cfg,
        engine=engine,
        ema=EMA(diffusion, o.ema_decay),
        batcher=setup.batcher,
        train_source=make_train_source(cfg, setup),
        val_data=setup.val_data,
        spec=setup.spec,
        normalizer=setup.normalizer,
        scaler=setup.scaler,
        checkpointer=StepFolders(CheckpointManager(cfg.checkpoint_path(), t.keep_checkpoints), t.resume),
        run_dir=run_dir,
        autocast_dtype=amp,
    )


def train_local(cfg: TrainConfig) -> TrainResult:
    if cfg.trainer != "local":
        raise ValueError(f"train_local runs trainer: local, this config has trainer: {cfg.trainer} "
                         "(unimat_dist.launch.run_training runs either)")
    trainer = build_local_trainer(cfg)
    result = trainer.fit()
    log.info(
        "done: %d steps, loss %.4f -> %.4f, val loss (EMA) %s, inference checkpoint %s",
        result.steps, result.first_loss, result.last_loss,
        "n/a" if result.val_loss is None else f"{result.val_loss:.4f}", result.inference_checkpoint,
    )
    return result
