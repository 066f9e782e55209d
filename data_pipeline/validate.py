"""Checks a parsed structure must pass before it is encoded; each failure names a quarantine reason.

They run on plain arrays (Z, fractional coordinates, lattice parameters), the common currency of the
fast CIF path, pymatgen and ASE, so every source is held to the same rules.
"""
from __future__ import annotations

import math

import numpy as np

from unimat_dist.representation import UniMatSpec
from unimat_dist.representation.periodic_table import SYMBOLS

from .quarantine import Rejected

_SHIFTS = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], dtype=np.float64)
_ZERO_SHIFT = 13  # index of (0, 0, 0) in _SHIFTS


def cell_matrix(params: np.ndarray) -> np.ndarray:
    """A (3, 3) row-vector matrix with the given lattice parameters (any orientation: distances only)."""
    a, b, c, al, be, ga = (float(v) for v in params)
    ca, cb, cg = math.cos(math.radians(al)), math.cos(math.radians(be)), math.cos(math.radians(ga))
    sg = math.sin(math.radians(ga))
    cx = c * cb
    cy = c * (ca - cb * cg) / sg
    cz = math.sqrt(max(c * c - cx * cx - cy * cy, 0.0))
    return np.array([[a, 0.0, 0.0], [b * cg, b * sg, 0.0], [cx, cy, cz]])


def volume_factor(params: np.ndarray) -> float:
    """1 - cos^2 a - cos^2 b - cos^2 g + 2 cos a cos b cos g: (V / abc)^2, <= 0 for impossible angles."""
    ca, cb, cg = (math.cos(math.radians(float(v))) for v in params[3:])
    return 1.0 - ca * ca - cb * cb - cg * cg + 2.0 * ca * cb * cg


def min_periodic_distance(frac: np.ndarray, matrix: np.ndarray, below: float | None = None) -> tuple[float, int, int]:
    """Smallest distance (Angstrom) between two atoms or an atom and a periodic image of itself,
    with the pair's indices. Images within one cell of the minimum-image difference are searched,
    which is exact for all but extremely sheared cells. With ``below``, the pair is located only if
    the distance is smaller (indices are -1 otherwise), which skips most of the work for good data."""
    n = frac.shape[0]
    shifts_cart = _SHIFTS @ matrix  # (27, 3)
    shift_sq = (shifts_cart**2).sum(-1)
    best, bi, bj = np.inf, -1, -1
    step = max(1, 4096 // n)  # bounds memory at ~27 * 4096 vectors per block
    for lo in range(0, n, step):
        d = frac[lo : lo + step, None, :] - frac[None, :, :]  # (b, n, 3)
        d -= np.round(d)
        v = d @ matrix  # (b, n, 3)
        # |v + s|^2 = |v|^2 + 2 v.s + |s|^2 for the 27 image shifts s, as one matmul
        dist2 = (v * v).sum(-1)[..., None] + 2.0 * (v @ shifts_cart.T) + shift_sq  # (b, n, 27)
        rows = np.arange(lo, min(lo + step, n))
        dist2[rows - lo, rows, _ZERO_SHIFT] = np.inf  # an atom and itself
        m = float(dist2.min())
        if m < best:
            best = m
            if below is None or m < below * below:
                b, j, _ = np.unravel_index(int(np.argmin(dist2)), dist2.shape)
                bi, bj = int(lo + b), int(j)
    return math.sqrt(max(best, 0.0)), bi, bj


def validate_arrays(
    z: np.ndarray,
    frac: np.ndarray,
    params: np.ndarray,
    spec: UniMatSpec,
    min_distance: float = 0.5,
    max_atoms: int | None = None,
) -> None:
    """Raise ``Rejected`` if the structure cannot or should not become a training sample."""
    n = int(z.size)
    if n == 0:
        raise Rejected("empty_structure", "the structure has no atoms")
    if params.shape != (6,) or not np.isfinite(params).all() or (params[:3] <= 0).any():
        raise Rejected("invalid_lattice", f"lattice parameters {np.round(params, 6).tolist()}")
    if volume_factor(params) <= 1e-8:
        raise Rejected("invalid_lattice", f"angles {np.round(params[3:], 4).tolist()} describe no 3D cell")
    if not np.isfinite(frac).all():
        bad = int(np.flatnonzero(~np.isfinite(frac).all(axis=1))[0])
        raise Rejected("invalid_coordinates", f"non-finite coordinates at site {bad}")
    if ((z < 1) | (z > 118)).any():
        raise Rejected("unknown_element", f"atomic numbers outside 1..118: {sorted(set(z[(z < 1) | (z > 118)].tolist()))}")
    outside = spec.cell_of_z[z][:, 0] < 0
    if outside.any():
        els = sorted({SYMBOLS[v - 1] for v in z[outside].tolist()})
        system = ",".join(spec.elements) if spec.elements else "the table"
        raise Rejected("element_outside_spec", f"element(s) {', '.join(els)} outside the spec's system ({system})")
    counts = np.bincount(z, minlength=119)
    if counts.max() > spec.L:
        over = np.flatnonzero(counts > spec.L)
        detail = ", ".join(f"{SYMBOLS[v - 1]}={counts[v]}" for v in over.tolist())
        raise Rejected("too_many_atoms_per_element", f"{detail} exceeds max_atoms_per_element L={spec.L}")
    if max_atoms is not None and n > max_atoms:
        raise Rejected("too_many_atoms", f"{n} atoms > validate.max_atoms={max_atoms}")
    if min_distance > 0:
        d, i, j = min_periodic_distance(frac, cell_matrix(params), below=min_distance)
        if d < min_distance:
            what = f"site {i} and a periodic image of itself" if i == j else f"sites {i} and {j}"
            raise Rejected("overlapping_atoms", f"{what} are {d:.3f} A apart (< validate.min_distance={min_distance})")
