"""Axial self-attention for (B, C, L, H, W) tensors: over the H x W table ("spatial") or along L ("slots").

One generic multi-head attention on token sequences; the axis is chosen by an einops rearrange, as in
video diffusion models. Pre-LayerNorm, residual, zero-initialised output projection (the block starts
as the identity). Uses ``F.scaled_dot_product_attention``, which picks flash/memory-efficient kernels on
GPU under bf16; bf16 on a CPU takes explicit matmul attention instead (``attend``).
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over (N, heads, T, d).

    ``F.scaled_dot_product_attention`` everywhere except bf16 on a CPU, where its flash kernel is 1.2-2.6x
    slower than two batched matmuls (which use AMX) for this network's short sequences (T = L slots, or
    the table's cells at a U-Net level); the softmax is taken in fp32 there.
    """
    if q.device.type != "cpu" or q.dtype != torch.bfloat16:
        return F.scaled_dot_product_attention(q, k, v)
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
    return torch.matmul(scores.softmax(-1).to(v.dtype), v)


class Attention(nn.Module):
    """Multi-head self-attention over (N, T, C) token sequences, residual."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * head_dim
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.out = nn.Linear(inner, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        q, k, v = (rearrange(t, "n t (h d) -> n h t d", h=self.heads) for t in (q, k, v))
        o = attend(q, k, v)
        return x + self.out(rearrange(o, "n h t d -> n t (h d)"))


class AxialAttention(nn.Module):
    """Attention along one axis of (B, C, L, H, W): ``"spatial"`` (tokens H*W per slot) or ``"slots"`` (tokens L per cell)."""

    def __init__(self, dim: int, heads: int, head_dim: int, axis: str) -> None:
        super().__init__()
        if axis not in ("spatial", "slots"):
            raise ValueError(f"axis must be 'spatial' or 'slots', got {axis!r}")
        self.axis = axis
        self.attn = Attention(dim, heads, head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, l, h, w = x.shape
        if self.axis == "spatial":
            t = self.attn(rearrange(x, "b c l h w -> (b l) (h w) c"))
            return rearrange(t, "(b l) (h w) c -> b c l h w", b=b, l=l, h=h, w=w)
        t = self.attn(rearrange(x, "b c l h w -> (b h w) l c"))
        return rearrange(t, "(b h w) l c -> b c l h w", b=b, h=h, w=w)


class SpatialSlotAttention(nn.Module):
    """Spatial attention over the table, then attention along the slots: the U-Net's attention unit."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.spatial = AxialAttention(dim, heads, head_dim, "spatial")
        self.slots = AxialAttention(dim, heads, head_dim, "slots")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.slots(self.spatial(x))
