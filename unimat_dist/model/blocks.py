"""Convolutional building blocks of the 3D U-Net, on tensors (B, C, L, H, W).

Convolutions are *factorised* by default: a (1, 3, 3) convolution over the H x W periodic-table
plane followed by a (3, 1, 1) convolution along the L slots (a "(2+1)D" / pseudo-3D convolution, as in
video diffusion). It costs about 12/27 of a full 3x3x3 convolution's FLOPs and parameters for the
same width, and the slot convolution starts as the identity so a freshly built network behaves like
a stack of 2D U-Nets over the table. ``conv="full"`` selects plain 3x3x3 convolutions instead
(``bench/bench_model.py`` measures both).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def adamw_groups(module: nn.Module, weight_decay: float, is_embedding) -> list[dict]:
    """AdamW parameter groups of a denoiser: decay conv/linear weights (2+ dims) only, not norms, biases or
    the parameters ``is_embedding(name)`` marks (embeddings, learned null values)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and not is_embedding(name) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def num_groups(channels: int) -> int:
    """GroupNorm groups: the most groups (<= 32) that leave at least 4 channels per group."""
    for g in (32, 16, 8, 4, 2, 1):
        if channels % g == 0 and channels // g >= 4:
            return g
    return 1


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups(channels), channels)


class Conv3x3(nn.Module):
    """A 3x3(x3) convolution that keeps (L, H, W): factorised (1,3,3)+(3,1,1) or full 3x3x3."""

    def __init__(self, c_in: int, c_out: int, kind: str = "factorized") -> None:
        super().__init__()
        self.kind = kind
        if kind == "full":
            self.conv = nn.Conv3d(c_in, c_out, 3, padding=1)
        elif kind == "factorized":
            self.spatial = nn.Conv3d(c_in, c_out, (1, 3, 3), padding=(0, 1, 1))
            self.slots = nn.Conv3d(c_out, c_out, (3, 1, 1), padding=(1, 0, 0))
            nn.init.dirac_(self.slots.weight)  # identity along L at initialisation
            nn.init.zeros_(self.slots.bias)
        else:
            raise ValueError(f"conv must be 'factorized' or 'full', got {kind!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "full":
            return self.conv(x)
        return self.slots(self.spatial(x))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, scale/shift from the conditioning vector, GroupNorm-SiLU-dropout-conv, + skip."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, conv: str = "factorized", dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(c_in)
        self.conv1 = Conv3x3(c_in, c_out, conv)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = group_norm(c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = Conv3x3(c_out, c_out, conv)
        self.skip = nn.Conv3d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        # Zero-initialised scale/shift and last conv: each block starts as the identity on its skip path.
        for p in (self.emb.weight, self.emb.bias):
            nn.init.zeros_(p)
        last = self.conv2.conv if conv == "full" else self.conv2.spatial
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return h + self.skip(x)


def downsampled_size(size: tuple[int, int, int], down_l: bool) -> tuple[int, int, int]:
    """(L, H, W) after one ``Downsample``: H and W (and L if ``down_l``) halved, rounded up (9 -> 5, 1 -> 1)."""
    l, h, w = size
    return ((l + 1) // 2 if down_l else l, (h + 1) // 2, (w + 1) // 2)


class Downsample(nn.Module):
    """Strided 3x3 convolution halving H, W (and L when ``down_l``); odd sizes round up."""

    def __init__(self, c_in: int, c_out: int, down_l: bool) -> None:
        super().__init__()
        kl, sl = (3, 2) if down_l else (1, 1)
        self.conv = nn.Conv3d(c_in, c_out, (kl, 3, 3), stride=(sl, 2, 2), padding=(kl // 2, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour resize to the skip connection's exact (L, H, W), then a 3x3 convolution.

    Resizing to an explicit size (rather than x2) is what makes odd sizes (9 x 18 -> 5 x 9 -> 9 x 18) work.
    """

    def __init__(self, c_in: int, c_out: int, conv: str = "factorized") -> None:
        super().__init__()
        self.conv = Conv3x3(c_in, c_out, conv)

    def forward(self, x: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
        if tuple(x.shape[-3:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)
