"""Exponential moving average of a module's weights, kept in float32 as a shadow copy of the module.

The shadow is a full module (eval mode, no grads), so validation and sampling use it directly and an
inference checkpoint is just its state dict. Decay warms up as min(decay, (1 + n) / (10 + n)) so that
short runs are not dominated by the random initial weights.

The EMA protocol the trainer uses: ``update(module)``, ``full_module(module, template)`` (the EMA weights as a
plain module; collective for ``training.sharded_ema.ShardedEMA``, the EMA of ZeRO-3 partitions),
``state_dict()`` / ``load_state_dict()``, and ``load_resharded(rank0_state, full_weights)`` for a resume on
another world size.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import nn


class WarmupDecay:
    """The decay of both EMAs (this one and ``ShardedEMA``): min(decay, (1 + n) / (10 + n)) after n updates."""

    def __init__(self, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.num_updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))


class EMA(WarmupDecay):
    def __init__(self, module: nn.Module, decay: float = 0.9999) -> None:
        super().__init__(decay)
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        for p in self.module.parameters():  # float32 shadow weights; buffers keep their dtype
            p.data = p.data.float()

    def full_module(self, module: nn.Module | None = None, template: nn.Module | None = None) -> nn.Module:
        """The EMA weights as a plain module (the EMA protocol; ``ShardedEMA`` gathers its shards here)."""
        return self.module

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """shadow <- d * shadow + (1 - d) * weights, for every parameter; buffers are copied."""
        d = self.current_decay()
        self.num_updates += 1
        shadow = dict(self.module.named_parameters())
        src, dst = [], []
        for name, p in module.named_parameters():
            src.append(p.detach().float())
            dst.append(shadow[name])
        torch._foreach_lerp_(dst, src, 1.0 - d)
        shadow_buffers = dict(self.module.named_buffers())
        for name, b in module.named_buffers():
            shadow_buffers[name].copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])

    def load_resharded(self, rank0: dict[str, Any], full_weights: Callable[[], dict[str, torch.Tensor]]) -> None:
        """Resume on another world size: rank 0's state already holds the whole module."""
        self.load_state_dict(rank0)
