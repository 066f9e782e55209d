"""The model + optimizer step behind a small interface, so that DeepSpeed can replace plain PyTorch.

The training loop only ever calls::

    engine.set_lr(lr)                       # once per optimizer step, before the micro-batches
    loss, metrics = engine.loss(batch, g)   # per micro-batch, forward under the engine's precision; g draws t and noise
    engine.backward(loss)                   # per micro-batch
    grad_norm = engine.step()               # once per optimizer step: clip, step, zero grads
    engine.module                           # the unwrapped GaussianDiffusion (EMA, validation)
    engine.state_dict() / load_state_dict() # model + optimizer state for checkpoints

A DeepSpeed engine adapter implements the same: ``loss`` calls ``ds_engine(...)`` (DeepSpeed
handles bf16), ``backward`` calls ``ds_engine.backward(loss)`` then ``ds_engine.step()`` (a no-op except at
the gradient-accumulation boundary, which DeepSpeed counts itself), ``step`` returns
``ds_engine.get_global_grad_norm()``, and checkpoints go through ``ds_engine.save_checkpoint``.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any, Protocol

import torch
from torch import nn

from .batches import ModelBatch

log = logging.getLogger(__name__)


class Engine(Protocol):
    module: nn.Module
    partitioned: bool  # every rank holds a slice of each weight (ZeRO-3): each forward is collective

    def describe(self) -> str: ...  # for the run's log line

    def set_lr(self, lr: float) -> None: ...

    def loss(self, batch: ModelBatch, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self) -> float: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device=cuda but CUDA is not available on this machine")
    return torch.device(name)


def resolve_autocast(precision: str, device: torch.device | str) -> torch.dtype | None:
    """bf16 autocast dtype, or None for fp32, of either engine (``device``: a device or its type).
    ``auto`` = bf16 on CUDA, fp32 on CPU."""
    device_type = getattr(device, "type", device)
    if precision == "auto":
        return torch.bfloat16 if device_type == "cuda" else None
    if precision == "bf16" and device_type != "cuda":
        _warn_once("bf16 autocast on CPU is slow on most CPUs; precision=fp32 is the CPU default")
    return torch.bfloat16 if precision == "bf16" else None


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    """One warning per process: the config check, the engine and the DeepSpeed config all resolve the
    precision, and the user needs to read it once."""
    log.warning(message)


def build_optimizer(denoiser, *, lr: float, betas, eps: float, weight_decay: float, device: torch.device):
    """AdamW over the denoiser's parameter groups (fused kernel on CUDA)."""
    extra = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(denoiser.optim_groups(weight_decay), lr=lr, betas=tuple(betas), eps=eps, **extra)


class LocalEngine:
    """Plain PyTorch on one device: autocast, loss scaling for gradient accumulation, clipping, AdamW."""

    def __init__(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        grad_accum: int = 1,
        grad_clip: float = 1.0,
        autocast_dtype: torch.dtype | None = None,
        forward: nn.Module | None = None,
    ) -> None:
        self.module = module
        self.partitioned = False
        self.forward = forward if forward is not None else module  # e.g. a torch.compile'd view of ``module``
        self.optimizer = optimizer
        self.grad_accum = grad_accum
        self.grad_clip = grad_clip
        self.autocast_dtype = autocast_dtype
        self.device = next(module.parameters()).device

    def _amp(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def describe(self) -> str:
        return "torch AdamW" + (" (torch.compile)" if self.forward is not self.module else "")

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def loss(self, batch: ModelBatch, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``generator`` draws the timesteps and noise (the loop seeds one per micro-batch)."""
        batch = batch.to(self.device)
        with self._amp():
            return self.forward(batch.x0, batch.y0, batch.mask, batch.cond, generator=generator)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.grad_accum).backward()

    def step(self) -> float:
        params = [p for p in self.module.parameters() if p.grad is not None]
        if self.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        else:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
