"""Autoguidance: guide a denoiser with a weaker version of itself (Karras et al., "Guiding a Diffusion
Model with a Bad Version of Itself", NeurIPS 2024).

    eps_hat = eps_main + w (eps_main - eps_guide)

``eps_guide`` is the same network at an earlier point of the same training run (the same architecture,
data and conditioning, trained less). ``max_t`` limits it to the low-noise end, t <= max_t (guidance in
a limited interval, Kynkäänniemi et al., NeurIPS 2024): rows at larger t get ``eps_main`` alone and cost
one forward. Where the two agree the prediction is unchanged; where the main
network has learned more than the guide (sharper modes: bond lengths, coordination) the difference is
extrapolated. Unlike lowering the sampling temperature (``noise_scale``), which concentrates samples on
the most frequent structures, it sharpens each sample where it is without shrinking the spread between
samples as much. Measured on the Carbon-24 release (docs/learning_core.md).

The wrapper has the denoiser's call signature, so every reverse process (the fixed-batch sampler, the
service's running loop, batch jobs) and classifier-free guidance over properties run through it
unchanged; each network evaluation costs two forwards.
"""
from __future__ import annotations

import math

import torch
from torch import nn

MAX_WEIGHT = 10.0  # beyond this the extrapolation is no longer a correction; refuse it from a file


def check_weight(weight, where: str = "autoguidance weight") -> float:
    """A finite weight in [0, MAX_WEIGHT] (0: no autoguidance)."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
            or not 0.0 <= float(weight) <= MAX_WEIGHT:
        raise ValueError(f"{where} must be a number in [0, {MAX_WEIGHT:g}], got {repr(weight)[:80]}")
    return float(weight)


def check_max_t(max_t, where: str = "autoguidance max_t") -> int | None:
    """None (every timestep) or an integer >= 0."""
    if max_t is None:
        return None
    if isinstance(max_t, bool) or not isinstance(max_t, int) or max_t < 0:
        raise ValueError(f"{where} must be an integer >= 0, got {repr(max_t)[:80]}")
    return max_t


class AutoGuidedDenoiser(nn.Module):
    """``main`` extrapolated away from ``guide`` by ``weight``: a drop-in for ``main`` at sampling time."""

    def __init__(self, main: nn.Module, guide: nn.Module, weight: float, max_t: int | None = None):
        super().__init__()
        if type(main) is not type(guide):
            raise ValueError(f"the guide network is a {type(guide).__name__}, the main one a {type(main).__name__}")
        self.main = main
        self.guide = guide
        self.weight = check_weight(weight)
        self.max_t = check_max_t(max_t)
        self.lattice_dim = main.lattice_dim

    @property
    def composition(self):
        """The main network's composition prior (the guide's is never used)."""
        return getattr(self.main, "composition", None)

    def networks(self) -> tuple[nn.Module, nn.Module]:
        return self.main, self.guide

    def init_kwargs(self) -> dict:
        return self.main.init_kwargs()

    def forward(self, x: torch.Tensor, lattice: torch.Tensor, t: torch.Tensor, cond) -> tuple[torch.Tensor, torch.Tensor]:
        ex, ey = self.main(x, lattice, t, cond)
        if self.weight == 0.0:
            return ex, ey
        w = self.weight
        inside = None if self.max_t is None else t <= self.max_t
        if inside is None or bool(inside.all()):
            gx, gy = self.guide(x, lattice, t, cond)
            return ex + w * (ex - gx), ey + w * (ey - gy)
        rows = torch.nonzero(inside).flatten()
        if rows.numel() == 0:
            return ex, ey
        gx, gy = self.guide(x[rows], lattice[rows], t[rows], cond[rows])
        ex, ey = ex.clone(), ey.clone()
        ex[rows] = ex[rows] + w * (ex[rows] - gx)
        ey[rows] = ey[rows] + w * (ey[rows] - gy)
        return ex, ey


def networks(denoiser: nn.Module) -> tuple[nn.Module, ...]:
    """Every network a sampling denoiser runs: ``denoiser`` itself, or the main and guide networks of an
    autoguided pair (what freeing or moving weights must cover)."""
    return denoiser.networks() if isinstance(denoiser, AutoGuidedDenoiser) else (denoiser,)


def main_network(denoiser: nn.Module) -> nn.Module:
    """The network that was trained to sample: ``denoiser`` itself, or the main one of an autoguided pair
    (what parameter counts report)."""
    return denoiser.main if isinstance(denoiser, AutoGuidedDenoiser) else denoiser
