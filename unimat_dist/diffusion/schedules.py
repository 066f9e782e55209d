"""Noise schedules of the DDPM forward process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I).

Pure functions returning float64 tensors of length T (index t = 0 .. T-1 is diffusion step t + 1).
"""
from __future__ import annotations

import math

import torch


def linear_betas(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Ho et al. (2020): betas linear from 1e-4 to 0.02 at T = 1000; rescaled for other T so that the
    total amount of noise (and abar_T ~ 4e-5) stays the same (Nichol & Dhariwal 2021)."""
    scale = 1000.0 / timesteps
    return torch.linspace(scale * beta_start, scale * beta_end, timesteps, dtype=torch.float64)


def cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal (2021): abar(t) = cos^2(((t/T + s) / (1 + s)) pi/2), betas clipped at ``max_beta``."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    abar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = 1 - abar[1:] / abar[:-1]
    return betas.clamp(max=max_beta)


def make_betas(kind: str, timesteps: int) -> torch.Tensor:
    if timesteps < 2:
        raise ValueError(f"timesteps must be >= 2, got {timesteps}")
    if kind == "linear":
        return linear_betas(timesteps)
    if kind == "cosine":
        return cosine_betas(timesteps)
    raise ValueError(f"unknown beta schedule {kind!r}; expected 'linear' or 'cosine'")


def sampling_timesteps(timesteps: int, steps: int) -> torch.Tensor:
    """Descending timesteps for a sampler that takes ``steps`` steps: evenly spaced over [0, T-1],
    always including T-1 (pure noise) and 0 (the last denoising step)."""
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be in [1, {timesteps}], got {steps}")
    if steps == 1:
        return torch.tensor([timesteps - 1])
    seq = torch.linspace(0, timesteps - 1, steps, dtype=torch.float64).round().long()
    return torch.unique(seq).flip(0)
