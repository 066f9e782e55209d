"""Lattice parameters <-> matrices, vectorised over leading batch dimensions, for NumPy and torch.

The matrix convention is pymatgen's ``Lattice.from_parameters`` (rows are the lattice vectors, c along
z, a in the xz plane), so a structure rebuilt from ``params_to_matrix`` has exactly the parameters it
was given.
"""
from __future__ import annotations

import numpy as np

from ._xp import namespace

# Physical ranges used to clip decoded model output (Angstrom, degrees).
MIN_LENGTH, MAX_LENGTH = 1.0, 100.0
MIN_ANGLE, MAX_ANGLE = 20.0, 160.0


def params_to_matrix(params):
    """(..., 6) [a, b, c, alpha, beta, gamma] (Angstrom, degrees) -> (..., 3, 3) row-vector matrices."""
    xp = namespace(params)
    a, b, c = params[..., 0], params[..., 1], params[..., 2]
    al, be, ga = (params[..., i] * (np.pi / 180.0) for i in (3, 4, 5))
    val = (xp.cos(al) * xp.cos(be) - xp.cos(ga)) / (xp.sin(al) * xp.sin(be))
    val = xp.clip(val, -1.0, 1.0)
    gamma_star = xp.arccos(val)
    zero = xp.zeros_like(a)
    va = xp.stack([a * xp.sin(be), zero, a * xp.cos(be)], -1)
    vb = xp.stack([-b * xp.sin(al) * xp.cos(gamma_star), b * xp.sin(al) * xp.sin(gamma_star), b * xp.cos(al)], -1)
    vc = xp.stack([zero, zero, c], -1)
    return xp.stack([va, vb, vc], -2)


def matrix_to_params(matrix):
    """(..., 3, 3) row-vector matrices -> (..., 6) [a, b, c, alpha, beta, gamma]."""
    xp = namespace(matrix)
    va, vb, vc = matrix[..., 0, :], matrix[..., 1, :], matrix[..., 2, :]
    norm = lambda v: xp.sqrt((v * v).sum(-1))  # noqa: E731
    a, b, c = norm(va), norm(vb), norm(vc)

    def angle(u, v, nu, nv):
        return xp.arccos(xp.clip((u * v).sum(-1) / (nu * nv), -1.0, 1.0)) * (180.0 / np.pi)

    return xp.stack([a, b, c, angle(vb, vc, b, c), angle(va, vc, a, c), angle(va, vb, a, b)], -1)


def volume_factor(params):
    """1 - cos^2 a - cos^2 b - cos^2 g + 2 cos a cos b cos g = (V / abc)^2 (angles in degrees, last axis);
    NaN-free, <= 0 means no valid cell."""
    xp = namespace(params)
    ca, cb, cg = (xp.cos(params[..., i] * (np.pi / 180.0)) for i in (3, 4, 5))
    return 1.0 - ca * ca - cb * cb - cg * cg + 2.0 * ca * cb * cg


def cell_volume(params, floor: float = 1e-9) -> float:
    """Volume (A^3) of one cell (a, b, c, alpha, beta, gamma), in A and degrees; ``floor`` bounds the squared
    volume factor from below (an impossible angle triple gets a tiny, not a NaN, volume)."""
    params = np.asarray(params, dtype=float)
    return float(np.prod(params[:3]) * np.sqrt(max(float(volume_factor(params)), floor)))


def clip_params(params, min_volume_factor: float = 0.05):
    """Clip lattice parameters to physical ranges and repair impossible angle triples.

    Lengths go to [MIN_LENGTH, MAX_LENGTH] Angstrom and angles to [MIN_ANGLE, MAX_ANGLE] degrees. Angle
    triples that describe no cell (or an almost flat one: the squared volume factor below
    ``min_volume_factor``) are pulled towards 90 degrees along the straight line until the factor is
    reached, which keeps the shape as close to the prediction as the rule allows.
    """
    xp = namespace(params)
    lengths = xp.clip(params[..., :3], MIN_LENGTH, MAX_LENGTH)
    angles = xp.clip(params[..., 3:], MIN_ANGLE, MAX_ANGLE)
    # Bisection on t in [0, 1]: angles(t) = 90 + (1 - t) (angles - 90); t = 1 is the cube.
    lo = xp.zeros_like(angles[..., 0])
    hi = xp.ones_like(angles[..., 0])
    ok0 = volume_factor(xp.concatenate([lengths, angles], -1)) >= min_volume_factor
    for _ in range(30):
        mid = (lo + hi) / 2
        trial = 90.0 + (1.0 - mid[..., None]) * (angles - 90.0)
        good = volume_factor(xp.concatenate([lengths, trial], -1)) >= min_volume_factor
        hi = xp.where(good, mid, hi)
        lo = xp.where(good, lo, mid)
    t = xp.where(ok0, xp.zeros_like(hi), hi)
    angles = 90.0 + (1.0 - t[..., None]) * (angles - 90.0)
    return xp.concatenate([lengths, angles], -1)
