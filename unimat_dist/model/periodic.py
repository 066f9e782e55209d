"""Periodic geometry for the atom-token denoiser: circle embeddings of fractional coordinates and the
translation-invariant pair features computed from them.

A fractional coordinate u in [0, 1) lives on a circle; the diffusion model works with its embedding
(cos 2 pi u, sin 2 pi u) in R^2, one pair per axis (``diffusion/positions.py``). A change of origin
(u -> u + s mod 1 for every atom) rotates every pair of one axis by the same angle, so anything computed
from *relative* phases is invariant to it:

* Fourier features of the relative position of atoms i and j: Re/Im of (z_i conj z_j / |z_i||z_j|)^k for
  harmonics k = 1..K and each axis, i.e. cos/sin(2 pi k (u_j - u_i));
* Cartesian distances: the fractional offset u_j - u_i (from the noisy phases) through the lattice's
  metric tensor G (from the noisy lattice parameters), to the ``images`` nearest periodic images,
  expanded in Gaussian radial basis functions, and the offset vector to the nearest image itself.

Both are computed without gradients: they are functions of the network's inputs only.
"""
from __future__ import annotations

import math

import torch

TWO_PI = 2.0 * math.pi


def phases(z: torch.Tensor) -> torch.Tensor:
    """(..., 3, 2) circle embeddings -> (..., 3) fractional coordinates in [-0.5, 0.5)."""
    return torch.atan2(z[..., 1], z[..., 0]) / TWO_PI


def fourier_pair_features(unit: torch.Tensor, harmonics: int) -> torch.Tensor:
    """unit (B, A, 3) complex unit phases -> (B, A, A, 6 K): cos/sin of 2 pi k (u_j - u_i), k = 1..K."""
    rel = unit[:, None, :] * unit[:, :, None].conj()  # [b, i, j] = e^{2 pi i (u_j - u_i)}
    feats, power = [], rel
    for k in range(harmonics):
        if k:
            power = power * rel
        feats.append(torch.view_as_real(power).flatten(-2))
    return torch.cat(feats, -1)


def metric_tensor(params: torch.Tensor) -> torch.Tensor:
    """(B, 6) lattice parameters (a, b, c in Angstrom, angles in degrees) -> (B, 3, 3) metric G = M M^T.

    Impossible angle triples give an indefinite G; callers clamp squared distances at zero."""
    a, b, c = params[:, 0], params[:, 1], params[:, 2]
    ca, cb, cg = torch.cos(torch.deg2rad(params[:, 3:])).unbind(-1)
    row0 = torch.stack([a * a, a * b * cg, a * c * cb], -1)
    row1 = torch.stack([a * b * cg, b * b, b * c * ca], -1)
    row2 = torch.stack([a * c * cb, b * c * ca, c * c], -1)
    return torch.stack([row0, row1, row2], -2)


_IMAGES = torch.stack(torch.meshgrid(*[torch.arange(-1.0, 2.0)] * 3, indexing="ij"), -1).reshape(27, 3)


def image_distances(frac: torch.Tensor, metric: torch.Tensor, images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """frac (B, A, 3), metric (B, 3, 3) -> distances (B, A, A, images) to the nearest periodic images of
    atom j seen from atom i (ascending; the 27 cells around the minimum-image offset are searched), and
    the fractional offset vector to the nearest one, (B, A, A, 3)."""
    d = frac[:, None, :, :] - frac[:, :, None, :]
    d = d - torch.round(d)
    v = d[..., None, :] + _IMAGES.to(frac)  # (B, A, A, 27, 3)
    gv = torch.einsum("bijnk,bkl->bijnl", v, metric)
    dist = (gv * v).sum(-1).clamp(min=1e-8).sqrt()
    dist, which = dist.topk(images, dim=-1, largest=False)
    nearest = torch.gather(v, 3, which[..., :1, None].expand(-1, -1, -1, 1, 3))[..., 0, :]
    return dist, nearest


def radial_basis(dist: torch.Tensor, num: int, cutoff: float) -> torch.Tensor:
    """Gaussian RBFs centred on 0.5 .. ``cutoff`` Angstrom, summed over the last (images) axis."""
    mu = torch.linspace(0.5, cutoff, num, device=dist.device, dtype=dist.dtype)
    width = (cutoff - 0.5) / num
    return torch.exp(-(((dist[..., None] - mu) / width) ** 2)).sum(-2)


__all__ = ["fourier_pair_features", "image_distances", "metric_tensor", "phases", "radial_basis"]
