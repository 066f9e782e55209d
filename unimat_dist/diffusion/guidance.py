"""Classifier-free guidance over auxiliary properties.

    eps_hat = (1 + w) * eps(x, c, aux) - w * eps(x, c)

c is the composition (always kept), aux the property values; eps(x, c) is the same network with every
property replaced by its learned null embedding (what training's property dropout teaches it). w = 0 is
exactly the conditional model; w is per sample so one batch can mix guidance weights.
"""
from __future__ import annotations

import torch

from unimat_dist.model.conditioning import Condition


def cfg_combine(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(1 + w) eps_cond - w eps_uncond with w (B,) broadcast over the trailing dimensions."""
    w = w.to(eps_cond.dtype).reshape(-1, *([1] * (eps_cond.dim() - 1)))
    return (1 + w) * eps_cond - w * eps_uncond


def guided_rows(cond: Condition, w: torch.Tensor) -> torch.Tensor:
    """Indices of the samples that need the unconditional pass: w != 0 and some property given."""
    return torch.nonzero((w != 0) & cond.has_properties()).flatten()


def guided_eps(
    denoiser,
    x: torch.Tensor,
    y: torch.Tensor,
    t: torch.Tensor,
    cond: Condition,
    w: torch.Tensor,
    rows: torch.Tensor | None = None,
    paired: Condition | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Guided noise predictions (float32) for positions and lattice.

    The conditional pass for all B samples and the unconditional pass for the ``rows`` that need it
    run as one batched forward. Samples outside ``rows`` get the conditional prediction unchanged.
    ``paired`` is ``paired_condition(cond, rows)``, precomputed by samplers that call this every step.
    """
    if rows is None:
        rows = guided_rows(cond, w)
    b = x.shape[0]
    if rows.numel() == 0:
        ex, ey = denoiser(x, y, t, cond)
        return ex.float(), ey.float()
    if paired is None:
        paired = paired_condition(cond, rows)
    ex, ey = denoiser(torch.cat([x, x[rows]]), torch.cat([y, y[rows]]), torch.cat([t, t[rows]]), paired)
    ex, ey = ex.float(), ey.float()
    cx, cy = ex[:b].clone(), ey[:b].clone()
    cx[rows] = cfg_combine(cx[rows], ex[b:], w[rows])
    cy[rows] = cfg_combine(cy[rows], ey[b:], w[rows])
    return cx, cy


def paired_condition(cond: Condition, rows: torch.Tensor) -> Condition:
    """The batch of one guided forward: every condition, then the property-free copies of ``rows``."""
    return Condition.cat([cond, cond[rows].without_properties()])
