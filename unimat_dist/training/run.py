"""A training run in this process (``trainer: local``): ``train_local(cfg)``.

``unimat_dist.launch.run_training(cfg)`` is the entry point that also runs ``trainer: ray``
(``unimat_dist.distributed``, which wraps the same loop); this package does not import it.

    unimat train --config cluster/jobs/train_tiny_cpu.yaml train.steps=200
    python -c "from unimat_dist.launch import run_training; from unimat_dist.training import load_train_config; run_training(load_train_config('x.yaml'))"
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch

from unimat_dist.config import config_yaml, save_config

from .checkpoint import Checkpointer, CheckpointManager, StepFolders
from .config import TrainConfig
from .ema import EMA
from .engine import LocalEngine, build_optimizer, resolve_autocast, resolve_device
from .loop import Trainer, TrainObserver, TrainResult
from .setup import RunSetup, make_train_source, prepare_run

log = logging.getLogger(__name__)


def build_trainer(
    cfg: TrainConfig,
    *,
    device: torch.device,
    checkpointer: Checkpointer,
    run_dir: Path | None,
    rank: int = 0,
    world_size: int = 1,
    observers: Sequence[TrainObserver] = (),
    load_universal: bool = False,
) -> Trainer:
    """The one builder of a ``Trainer``, for both paths: the run setup (data, transforms, model), this
    rank's slice of the training data and the engine the config names - the plain PyTorch engine for
    ``trainer: local``, DeepSpeed ZeRO for ``trainer: ray`` (``load_universal``: the engine will load a
    DeepSpeed universal checkpoint, a resume on another world size). What differs between the paths is
    passed in: where it runs (device, rank, world size), its checkpointer and its observers."""
    setup = prepare_run(cfg, device=device, rank=rank)
    train_source = make_train_source(cfg, setup, rank=rank, world_size=world_size)
    if cfg.trainer == "ray":
        from .deepspeed_engine import deepspeed_parts

        engine, ema, template, amp = deepspeed_parts(cfg, setup, device=device, rank=rank, world_size=world_size,
                                                     load_universal=load_universal)
    else:
        engine, ema, template, amp = _local_parts(cfg, setup, device)
    trainer = Trainer(
        cfg,
        engine=engine,
        ema=ema,
        template=template,
        batcher=setup.batcher,
        train_source=train_source,
        val_data=setup.val_data,
        spec=setup.spec,
        normalizer=setup.normalizer,
        scaler=setup.scaler,
        checkpointer=checkpointer,
        run_dir=run_dir,
        autocast_dtype=amp,
        rank=rank,
        world_size=world_size,
        observers=observers,
    )
    if trainer.is_main:
        for note in setup.notes:
            log.info("data: %s", note)
        log.info(
            "%s; %d train / %d val crystals; model %s: %.2fM parameters; %s on %d worker(s), device %s%s; "
            "micro-batch %d x %d accumulation",
            setup.spec.describe(), setup.num_train, len(setup.val_data or []), cfg.model.preset,
            setup.diffusion.denoiser.num_params() / 1e6, engine.describe(), world_size, device,
            " (bf16 autocast)" if amp else "", trainer.micro_batch, trainer.accum,
        )
    return trainer


def _local_parts(cfg: TrainConfig, setup: RunSetup, device: torch.device):
    """(engine, EMA, template, autocast dtype) of ``trainer: local``: torch's AdamW in this process."""
    t, o = cfg.train, cfg.optim
    amp = resolve_autocast(t.precision, device)
    _, accum = t.grad_accum_steps(world_size=1)
    diffusion = setup.diffusion
    optimizer = build_optimizer(
        diffusion.denoiser, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay, device=device
    )
    forward = torch.compile(diffusion) if t.compile else None
    engine = LocalEngine(diffusion, optimizer, grad_accum=accum, grad_clip=o.grad_clip, autocast_dtype=amp, forward=forward)
    return engine, EMA(diffusion, o.ema_decay), None, amp


def build_local_trainer(cfg: TrainConfig) -> Trainer:
    """``build_trainer`` in this process: one device, step folders under ``out_dir``, the resolved config
    saved beside them and printed."""
    from unimat_dist.cpu_threads import configure

    configure(cfg.train.num_threads or None, what="train")
    run_dir = Path(cfg.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    log.info("config:\n%s", config_yaml(cfg))
    checkpointer = StepFolders(CheckpointManager(cfg.checkpoint_path(), cfg.train.keep_checkpoints), cfg.train.resume)
    return build_trainer(cfg, device=resolve_device(cfg.train.device), checkpointer=checkpointer, run_dir=run_dir)


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
