"""Vector embeddings that form the per-sample conditioning vector of the U-Net.

    emb = time_mlp(sinusoidal(t)) + lattice_mlp(y_t) + sum_p property_p(v_p or null_p)

Every residual block reads ``emb`` through a scale/shift of its normalised activations.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) timesteps (integer or float) -> (B, dim) [sin, cos] features at geometric frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], -1)
    return F.pad(emb, (0, dim % 2))


class TimestepEmbedding(nn.Module):
    def __init__(self, dim: int, emb_dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, t: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(t, self.dim).to(dtype))


class PropertyEmbedding(nn.Module):
    """P scalar properties -> one (B, E) vector; a missing/dropped value uses that property's learned null.

    Each property has its own 2-layer MLP (vectorised over P with einsum), so properties with different
    meaning do not share a code; their embeddings are summed. With P = 0 it returns zeros.
    """

    def __init__(self, num_properties: int, emb_dim: int) -> None:
        super().__init__()
        p, e = num_properties, emb_dim
        self.num_properties = p
        self.w1 = nn.Parameter(torch.randn(p, e) * 0.5)
        self.b1 = nn.Parameter(torch.zeros(p, e))
        self.w2 = nn.Parameter(torch.randn(p, e, e) / math.sqrt(e))
        self.b2 = nn.Parameter(torch.zeros(p, e))
        # The null embedding starts at a random point (not zero) so "no value" is distinct from value 0.
        self.null = nn.Parameter(torch.randn(p, e) * 0.02)

    def forward(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """values (B, P) standardised, mask (B, P) bool -> (B, E)."""
        b = values.shape[0]
        if self.num_properties == 0:
            return values.new_zeros((b, self.b1.shape[-1]))
        h = F.silu(values[..., None] * self.w1 + self.b1)  # (B, P, E)
        h = torch.einsum("bpe,pef->bpf", h, self.w2) + self.b2
        h = torch.where(mask[..., None], h, self.null.to(h.dtype).expand_as(h))
        return h.sum(1)
