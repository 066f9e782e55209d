"""DeepSpeed behind the training loop's ``Engine`` interface (``unimat_dist.training.engine``).

    ds_config = deepspeed_config(cfg, world_size=4, device_type="cuda")
    engine = DeepSpeedEngine.create(setup.diffusion, ds_config, weight_decay=cfg.optim.weight_decay)
    loss, metrics = engine.loss(batch); engine.backward(loss); grad_norm = engine.step()

Gradient accumulation is DeepSpeed's: ``backward`` scales the loss by 1/accum and calls the DeepSpeed
engine's ``step`` after every micro-batch (a no-op except at the accumulation boundary), exactly as
DeepSpeed expects. The learning rate is set by the loop's pure schedule (``set_lr``), so the same
warmup+cosine curve drives the local and the distributed run. Clipping is DeepSpeed's
``gradient_clipping``. On CPU the optimizer is torch's AdamW (``torch_adam``), which avoids a ~1 min
JIT build of DeepSpeed's fused CPU Adam.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from unimat_dist.training.batches import ModelBatch
from unimat_dist.training.config import TrainConfig
from unimat_dist.training.engine import resolve_autocast


def deepspeed_config(cfg: TrainConfig, *, world_size: int, device_type: str, load_universal: bool = False) -> dict[str, Any]:
    """The DeepSpeed JSON config of a run: ZeRO stage/offload, precision, batch sizes, clipping, AdamW."""
    d, o = cfg.distributed, cfg.optim
    micro, accum = cfg.train.grad_accum_steps(world_size)
    zero: dict[str, Any] = {"stage": d.zero_stage}
    if d.zero_stage >= 1 and d.offload_optimizer == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": device_type == "cuda"}
    if d.zero_stage == 3:
        if d.offload_params == "cpu":
            zero["offload_param"] = {"device": "cpu", "pin_memory": device_type == "cuda"}
        # Save the full 16-bit weights with every checkpoint: the inference checkpoint needs no zero_to_fp32.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    fused_cpu_adam = device_type != "cuda" and d.offload_optimizer == "cpu"
    ds: dict[str, Any] = {
        "train_batch_size": cfg.train.global_batch_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": o.grad_clip if o.grad_clip > 0 else 0.0,
        "zero_optimization": zero,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": o.lr,
                "betas": list(o.betas),
                "eps": o.eps,
                "weight_decay": o.weight_decay,
                # torch's AdamW on CPU unless the optimizer is offloaded (then DeepSpeed's CPU Adam is the point).
                "torch_adam": device_type != "cuda" and not fused_cpu_adam,
            },
        },
        "steps_per_print": 10**9,  # the loop logs; keep DeepSpeed quiet
        "wall_clock_breakdown": False,
        "checkpoint": {"load_universal": load_universal},
    }
    if resolve_autocast(d.precision, device_type) is not None:
        ds["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    return ds


def deepspeed_parts(cfg: TrainConfig, setup, *, device: torch.device, rank: int, world_size: int,
                    load_universal: bool = False):
    """(engine, EMA, template, autocast dtype) of ``trainer: ray`` (``training.run.build_trainer``). Under
    ZeRO-3 a rank holds only its partitions, so the EMA is sharded too and ``template`` is an unpartitioned
    copy of the model that the sharded EMA's full weights are gathered into."""
    from .ema import EMA
    from .setup import build_diffusion
    from .sharded_ema import ShardedEMA

    ds_cfg = deepspeed_config(cfg, world_size=world_size, device_type=device.type, load_universal=load_universal)
    engine = DeepSpeedEngine.create(setup.diffusion, ds_cfg, weight_decay=cfg.optim.weight_decay)
    if engine.partitioned:
        ema = ShardedEMA(engine.module, cfg.optim.ema_decay, rank)
        template = build_diffusion(cfg, setup.spec, len(setup.scaler.names), setup.normalizer).to(device)
    else:
        ema, template = EMA(engine.module, cfg.optim.ema_decay), None
    amp = torch.bfloat16 if "torch_autocast" in ds_cfg else None  # what deepspeed_config resolved
    return engine, ema, template, amp


class DeepSpeedEngine:
    """The ``Engine`` protocol over a ``deepspeed.DeepSpeedEngine``."""

    def __init__(self, ds_engine) -> None:
        self.ds = ds_engine
        self.module: nn.Module = ds_engine.module
        self.device = ds_engine.device
        self.zero_stage = ds_engine.zero_optimization_stage()
        self.partitioned = self.zero_stage == 3

    @classmethod
    def create(cls, module: nn.Module, ds_config: dict[str, Any], *, weight_decay: float) -> "DeepSpeedEngine":
        import deepspeed

        # Marks the checkpoints as convertible to DeepSpeed's universal format, which is how a run resumes
        # on a different number of workers (see deepspeed_checkpoint.py).
        module.universal_checkpoint_info = {"universal_checkpoint_version": 0.2}
        groups = module.denoiser.optim_groups(weight_decay) if hasattr(module, "denoiser") else module.parameters()
        ds_engine, _, _, _ = deepspeed.initialize(model=module, model_parameters=groups, config=ds_config)
        return cls(ds_engine)

    @property
    def optimizer(self):
        return self.ds.optimizer

    def describe(self) -> str:
        return f"DeepSpeed ZeRO-{self.zero_stage}"

    def set_lr(self, lr: float) -> None:
        for group in self.ds.optimizer.param_groups:
            group["lr"] = lr

    def loss(self, batch: ModelBatch, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch = batch.to(self.device)
        return self.ds(batch.x0, batch.y0, batch.mask, batch.cond, generator=generator)

    def backward(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss)
        self.ds.step()  # applies the update only at the gradient-accumulation boundary

    def step(self) -> float:
        if not self.ds.was_step_applied():
            raise RuntimeError("DeepSpeed did not apply an optimizer step at the accumulation boundary")
        norm = self.ds.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    # Model/optimizer state goes through DeepSpeed's own (sharded) checkpoint files, see deepspeed_checkpoint.py.
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
