"""EMA of the weights when DeepSpeed ZeRO-3 partitions them.

Under ZeRO-3 a rank holds only its partition of every parameter (``p.ds_tensor``, a flat slice of the
flattened, zero-padded parameter), so the EMA is kept the same way: one flat fp32 shadow per parameter
and rank, updated with no communication. A full EMA module (validation, inference checkpoints) is
materialised collectively by swapping the shadows into the partitions and gathering.

Ranks with ZeRO 0-2 hold full parameters and use the plain ``unimat_dist.training.ema.EMA``.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import nn

from .ema import WarmupDecay


def partition_of(full: torch.Tensor, rank: int, partition_numel: int) -> torch.Tensor:
    """Rank ``rank``'s ZeRO-3 partition of a full parameter: flat, zero-padded slice [r*n, (r+1)*n)."""
    flat = full.detach().reshape(-1).float()
    start = rank * partition_numel
    out = torch.zeros(partition_numel, dtype=torch.float32, device=flat.device)
    if start < flat.numel():
        n = min(partition_numel, flat.numel() - start)
        out[:n] = flat[start : start + n]
    return out


class ShardedEMA(WarmupDecay):
    def __init__(self, module: nn.Module, decay: float, rank: int) -> None:
        super().__init__(decay)
        self.rank = rank
        self.names = [n for n, _ in module.named_parameters()]
        self.shadow = [p.ds_tensor.detach().float().clone() for _, p in module.named_parameters()]
        self._module_ref = module

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        d = self.current_decay()
        self.num_updates += 1
        src = [p.ds_tensor.detach().float() for _, p in module.named_parameters()]
        torch._foreach_lerp_(self.shadow, src, 1.0 - d)

    @torch.no_grad()
    def full_state_dict(self, module: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """Collective (every rank must call it): the full EMA weights as {name: tensor} on every rank."""
        import deepspeed

        module = module or self._module_ref
        params = [p for _, p in module.named_parameters()]
        saved = [p.ds_tensor.data.clone() for p in params]
        for p, s in zip(params, self.shadow):
            p.ds_tensor.data.copy_(s.to(p.ds_tensor.dtype))
        try:
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                out = {n: p.detach().float().cpu().clone() for n, p in zip(self.names, params)}
        finally:
            for p, s in zip(params, saved):
                p.ds_tensor.data.copy_(s)
        persistent = set(module.state_dict().keys())  # non-persistent buffers are not state
        for n, b in module.named_buffers():
            if n in persistent:
                out[n] = b.detach().cpu().clone()
        return out

    def full_module(self, module: nn.Module, template: nn.Module) -> nn.Module:
        """Collective: a plain (unpartitioned) copy of ``template`` holding the EMA weights."""
        shadow = copy.deepcopy(template).float().eval().requires_grad_(False)
        shadow.load_state_dict(self.full_state_dict(module))
        return shadow

    def state_dict(self) -> dict[str, Any]:
        """This rank's shards (valid for the same world size only; see ``load_full``)."""
        return {"shards": [s.cpu() for s in self.shadow], "num_updates": self.num_updates, "decay": self.decay,
                "rank": self.rank}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["shards"]) != len(self.shadow):
            raise ValueError("EMA checkpoint does not match the model's parameters")
        for dst, src in zip(self.shadow, state["shards"]):
            if dst.numel() != src.numel():
                raise ValueError("EMA shard size differs: the checkpoint was written with another world size")
            dst.copy_(src.to(dst.device))
        self.num_updates = int(state["num_updates"])

    def load_resharded(self, rank0: dict[str, Any], full_weights: Callable[[], dict[str, torch.Tensor]]) -> None:
        """Resume on another world size: rank 0's shards fit no rank now, so the full EMA weights
        (``full_weights()``, the checkpoint's inference file) are re-partitioned for this rank."""
        self.load_full(full_weights(), rank0["num_updates"])

    def load_full(self, full: dict[str, torch.Tensor], num_updates: int) -> None:
        """Re-partition full EMA weights for this rank (resume on a different number of workers)."""
        for i, (name, p) in enumerate(self._module_ref.named_parameters()):
            self.shadow[i] = partition_of(full[name].to(p.ds_tensor.device), self.rank, p.ds_tensor.numel())
        self.num_updates = int(num_updates)
