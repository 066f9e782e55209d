"""Checks a parsed structure must pass before it is encoded; each failure names a quarantine reason.

They run on plain arrays (Z, fractional coordinates, lattice parameters), the common currency of the
fast CIF path, pymatgen and ASE, so every source is held to the same rules.

Order matters for untrusted input: the checks that cost O(N) (atom counts, lattice ranges) run before
the O(N^2) distance search, so a record claiming 10,000 atoms is rejected before any pair array exists
(``check_counts`` is also called by the CIF reader on the listed sites, before it builds arrays).

Physical ranges (defaults of ``ValidateConfig``, chosen to cover MP, GNoME and the bundled CDVAE sets,
whose extremes are lengths 2.4-40.9 A, angles 11-169 deg, 5.4-202 A^3 per atom): a lattice outside them
is a unit error or a placeholder (1e12 A), and one such record would move the normalisation statistics
of the whole data set.
"""
from __future__ import annotations

import math

import numpy as np

from unimat_dist.representation import UniMatSpec
from unimat_dist.representation.lattice import cell_volume, volume_factor
from unimat_dist.representation.periodic_table import SYMBOLS

from .quarantine import Rejected

LATTICE_LENGTHS = (1.0, 200.0)  # Angstrom, inclusive
LATTICE_ANGLES = (1.0, 179.0)  # degrees, inclusive; the cell metric must also be positive definite
VOLUME_PER_ATOM = (1.0, 500.0)  # Angstrom^3 per atom, inclusive

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


def check_counts(z: np.ndarray, spec: UniMatSpec, max_atoms: int | None = None) -> None:
    """The O(N) composition checks: elements known and inside the spec, at most L atoms per element,
    at most ``max_atoms`` atoms. Cheap, so readers call it before anything quadratic."""
    z = np.asarray(z, dtype=np.int64)
    if ((z < 1) | (z > 118)).any():
        raise Rejected("unknown_element", f"atomic numbers outside 1..118: {sorted(set(z[(z < 1) | (z > 118)].tolist()))}")
    outside = spec.cell_of_z[z][:, 0] < 0
    if outside.any():
        els = sorted({SYMBOLS[v - 1] for v in z[outside].tolist()})
        system = ",".join(spec.elements) if spec.elements else "the table"
        raise Rejected("element_outside_spec", f"element(s) {', '.join(els)} outside the spec's system ({system})")
    counts = np.bincount(z, minlength=119)
    if counts.max(initial=0) > spec.L:
        over = np.flatnonzero(counts > spec.L)
        detail = ", ".join(f"{SYMBOLS[v - 1]}={counts[v]}" for v in over.tolist())
        raise Rejected("too_many_atoms_per_element", f"{detail} exceeds max_atoms_per_element L={spec.L}")
    if max_atoms is not None and z.size > max_atoms:
        raise Rejected("too_many_atoms", f"{z.size} atoms > validate.max_atoms={max_atoms}")


def check_lattice_ranges(
    params: np.ndarray,
    n_atoms: int,
    lengths: tuple[float, float] = LATTICE_LENGTHS,
    angles: tuple[float, float] = LATTICE_ANGLES,
    volume_per_atom: tuple[float, float] = VOLUME_PER_ATOM,
) -> None:
    """Lattice lengths, angles and volume per atom within physical ranges (``lattice_out_of_range``)."""
    lo, hi = lengths
    if (params[:3] < lo).any() or (params[:3] > hi).any():
        raise Rejected("lattice_out_of_range",
                       f"lengths {np.round(params[:3], 6).tolist()} A outside validate.lattice_length_range [{lo}, {hi}]")
    lo, hi = angles
    if (params[3:] < lo).any() or (params[3:] > hi).any():
        raise Rejected("lattice_out_of_range",
                       f"angles {np.round(params[3:], 4).tolist()} deg outside validate.lattice_angle_range [{lo}, {hi}]")
    vol = cell_volume(params, floor=0.0)
    lo, hi = volume_per_atom
    if not lo <= vol / n_atoms <= hi:
        raise Rejected("lattice_out_of_range",
                       f"{vol / n_atoms:.4g} A^3 per atom outside validate.volume_per_atom_range [{lo}, {hi}]")


def validate_arrays(
    z: np.ndarray,
    frac: np.ndarray,
    params: np.ndarray,
    spec: UniMatSpec,
    min_distance: float = 0.5,
    max_atoms: int | None = None,
    lengths: tuple[float, float] = LATTICE_LENGTHS,
    angles: tuple[float, float] = LATTICE_ANGLES,
    volume_per_atom: tuple[float, float] = VOLUME_PER_ATOM,
) -> None:
    """Raise ``Rejected`` if the structure cannot or should not become a training sample."""
    n = int(z.size)
    if n == 0:
        raise Rejected("empty_structure", "the structure has no atoms")
    params = np.asarray(params, dtype=np.float64)
    if params.shape != (6,) or not np.isfinite(params).all() or (params[:3] <= 0).any():
        raise Rejected("invalid_lattice", f"lattice parameters {np.round(params, 6).tolist()}")
    if float(volume_factor(params)) <= 1e-8:
        raise Rejected("invalid_lattice", f"angles {np.round(params[3:], 4).tolist()} describe no 3D cell")
    if frac.shape != (n, 3) or not np.isfinite(frac).all():
        bad = int(np.flatnonzero(~np.isfinite(frac).all(axis=1))[0]) if frac.shape == (n, 3) else -1
        raise Rejected("invalid_coordinates", f"non-finite coordinates at site {bad}")
    check_counts(z, spec, max_atoms)  # before anything O(N^2)
    if min_distance > 0:  # memory-bounded (blocks of pairs) and N is bounded by the counts above
        d, i, j = min_periodic_distance(frac, cell_matrix(params), below=min_distance)
        if d < min_distance:
            what = f"site {i} and a periodic image of itself" if i == j else f"sites {i} and {j}"
            raise Rejected("overlapping_atoms", f"{what} are {d:.3f} A apart (< validate.min_distance={min_distance})")
    # after the distance check, so a too-small cell reads as the overlap it causes
    check_lattice_ranges(params, n, lengths, angles, volume_per_atom)
