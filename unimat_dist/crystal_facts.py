"""What a generated crystal is, in numbers a materials scientist reads: one flat, JSON-able dict per crystal.

    from unimat_dist.crystal_facts import crystal_facts
    facts = crystal_facts(structure, flags=validity_flags(structure), energies={"e_hull": 0.03})

The keys (``FACT_KEYS``) are stable: every dict has all of them, in this order, ``None`` where a value
does not apply or could not be computed (the reason is in ``symmetry_error`` / ``distance_error``). The
per-run tables (``summary.csv`` / ``summary.json`` "crystals", the ``atoms.info`` of extxyz frames; see
``unimat_dist.crystal_files``) use exactly these keys.

===========================  ============================================================================
key                          meaning
===========================  ============================================================================
``formula``                  reduced formula (pymatgen), e.g. ``SrTiO3``
``num_atoms``                atoms in the cell as generated
``elements``                 sorted element symbols (a list; ``"Sr Ti O"``-style joined by spaces in CSV)
``num_elements``             number of distinct elements
``spacegroup_symbol``        Hermann-Mauguin symbol found by spglib (through pymatgen's
``spacegroup_number``        ``SpacegroupAnalyzer``, ``angle_tolerance`` 5 degrees) at ``symprec``
``symprec``                  the stated tolerance in Angstrom (default 0.1)
``loose_spacegroup_symbol``  the highest group spglib finds at a looser tolerance of ``SYMPREC_LADDER``
``loose_spacegroup_number``  (0.01, 0.05, 0.1, 0.2, 0.5 A; only values above ``symprec`` are tried),
``loose_symprec``            and the smallest such tolerance at which it appears; all three ``None`` when no
                             looser tolerance gives a higher group. "Higher" = more symmetry operations of
                             the input cell (spglib's rotations incl. pure translations), so a supergroup
                             of the same point group with a smaller primitive cell (P -> I) counts too.
                             The loosest rung (0.5 A) is searched first, the rungs in between only when it
                             finds a higher group or spglib gives up there (a group that would appear at
                             0.2 A and vanish at 0.5 A is not reported)
``symmetry_error``           why the space group is ``None`` (spglib failed, cell too large, ...) else None
``density``                  g/cm^3
``volume``                   cell volume, A^3
``volume_per_atom``          A^3 per atom
``min_distance``             shortest interatomic distance in A, periodic images included (a 1-atom cell:
                             its distance to its own nearest image)
``min_distance_pair``        the elements of that shortest distance, e.g. ``"O-Ti"`` (sorted)
``min_distance_ratio``       smallest d_ij / (r_i + r_j) over all pairs, r = covalent radii of
                             ``ase.data.covalent_radii`` (Cordero et al. 2008; pymatgen's
                             ``Element.atomic_radius`` is not covalent); ~0.8-1.1 in real crystals
``min_ratio_pair``           the elements of that pair
``too_close``                ``min_distance_ratio < TOO_CLOSE_RATIO`` (0.5): e.g. Ti-O at 0.7 A (ratio 0.31)
                             although CDVAE's 0.5 A rule calls it valid
``distance_error``           why the distances are ``None`` (degenerate lattice, ...) else None
``decoded``                  validity flags of ``unimat_dist.generation.records.validity_flags``
``structure_valid``          (``None`` when not given or not applicable)
``composition_valid``
``matches_request``
``energy_per_atom``          energies when computed (eV/atom; ``e_hull`` above the reference hull),
``e_form_per_atom``          else None; other keys of ``energies`` are appended after these
``e_hull``
===========================  ============================================================================

Cost: 4.7 ms of CPU per crystal (965 bundled Perov-5 / Carbon-24 / MP-20 crystals, 7.6 atoms on
average), 3.7 ms of it spglib (two calls at the default ``symprec`` for most crystals: 0.1 and 0.5 A; up
to four when a higher group appears), 0.2 ms the distances; ``facts_table`` spreads 2,000+ crystals over
worker processes. Pathological crystals never hang: non-finite coordinates,
degenerate lattices, cells over ``MAX_SYMMETRY_ATOMS`` / ``MAX_DISTANCE_ATOMS`` atoms get ``None`` with a
reason instead of an unbounded spglib call or neighbour search.
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Any, Iterable, Mapping

import numpy as np

os.environ.setdefault("SPGLIB_WARNING", "OFF")  # spglib prints C-level warnings on stderr for every odd cell

SYMPREC = 0.1
SYMPREC_LADDER = (0.01, 0.05, 0.1, 0.2, 0.5)  # Angstrom
ANGLE_TOLERANCE = 5.0  # degrees (pymatgen's default)
TOO_CLOSE_RATIO = 0.5
MAX_SYMMETRY_ATOMS = 1000  # spglib above this: None ("cell too large")
MAX_LADDER_ATOMS = 300  # the loose-tolerance ladder only below this (each rung is one more spglib call)
MAX_DISTANCE_ATOMS = 20_000
DENSE_DISTANCE_ATOMS = 200  # up to here: all pairs (N^2 x 27 images, vectorised); above: a neighbour list
FLAG_KEYS = ("decoded", "structure_valid", "composition_valid", "matches_request")
ENERGY_KEYS = ("energy_per_atom", "e_form_per_atom", "e_hull")

FACT_KEYS = (
    "formula", "num_atoms", "elements", "num_elements",
    "spacegroup_symbol", "spacegroup_number", "symprec",
    "loose_spacegroup_symbol", "loose_spacegroup_number", "loose_symprec", "symmetry_error",
    "density", "volume", "volume_per_atom",
    "min_distance", "min_distance_pair", "min_distance_ratio", "min_ratio_pair", "too_close", "distance_error",
    *FLAG_KEYS, *ENERGY_KEYS,
)


def empty_facts(symprec: float = SYMPREC) -> dict[str, Any]:
    """Every key, ``None`` (a crystal that did not decode)."""
    out: dict[str, Any] = dict.fromkeys(FACT_KEYS)
    out["symprec"] = symprec
    return out


def _num(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _covalent_radii(numbers: np.ndarray) -> np.ndarray:
    from ase.data import covalent_radii

    return np.asarray(covalent_radii, dtype=float)[numbers]


# ------------------------------------------------------------------------------------------ symmetry
def _spglib(structure, symprec: float):
    """(symbol, number, operations) of spglib at ``symprec``; raises on failure."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    sga = SpacegroupAnalyzer(structure, symprec=symprec, angle_tolerance=ANGLE_TOLERANCE)
    data = sga.get_symmetry_dataset()
    return str(data.international), int(data.number), len(data.rotations)


def symmetry_facts(structure, symprec: float = SYMPREC) -> dict[str, Any]:
    """The space-group keys of ``FACT_KEYS`` (see the module docstring)."""
    out = {"spacegroup_symbol": None, "spacegroup_number": None, "symprec": symprec,
           "loose_spacegroup_symbol": None, "loose_spacegroup_number": None, "loose_symprec": None,
           "symmetry_error": None}
    n = len(structure)
    if n > MAX_SYMMETRY_ATOMS:
        out["symmetry_error"] = f"cell too large for the symmetry search ({n} > {MAX_SYMMETRY_ATOMS} atoms)"
        return out
    try:
        symbol, number, ops = _spglib(structure, symprec)
    except Exception as exc:  # noqa: BLE001 - spglib returns None / pymatgen raises several types
        out["symmetry_error"] = f"spglib found no space group at symprec={symprec}: {type(exc).__name__}: {exc}"[:300]
        return out
    out["spacegroup_symbol"], out["spacegroup_number"] = symbol, number
    if n > MAX_LADDER_ATOMS:
        return out
    rungs = [tol for tol in SYMPREC_LADDER if tol > symprec]
    found = {}  # tolerance -> (symbol, number, operations), None where spglib gave up

    def at(tol):
        if tol not in found:
            try:
                found[tol] = _spglib(structure, tol)
            except Exception:  # noqa: BLE001 - at a loose tolerance spglib may merge atoms and give up
                found[tol] = None
        return found[tol]

    # The loosest rung first: when it finds no more operations than ``symprec`` (the usual case), the rungs
    # in between are not searched (a group that appears at 0.2 A and is gone again at 0.5 A is missed)
    if rungs and (at(rungs[-1]) is None or at(rungs[-1])[2] > ops):
        for tol in rungs[:-1]:
            at(tol)
    best = None
    for tol in rungs:
        r = found.get(tol)
        if r is not None and r[2] > (best[2] if best else ops):
            best = (*r, tol)
    if best is not None:
        out["loose_spacegroup_symbol"], out["loose_spacegroup_number"], out["loose_symprec"] = best[0], best[1], best[3]
    return out


# ------------------------------------------------------------------------------------------ distances
_IMAGES = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], dtype=float)


def _pair_name(a: str, b: str) -> str:
    return "-".join(sorted((a, b)))


def distance_facts(structure) -> dict[str, Any]:
    """``min_distance``, ``min_distance_pair``, ``min_distance_ratio``, ``min_ratio_pair``, ``too_close``,
    ``distance_error``.

    Up to ``DENSE_DISTANCE_ATOMS`` atoms every pair is measured over the 27 images of the LLL-reduced
    cell (vectorised numpy); larger cells use pymatgen's neighbour list within the shortest lattice
    vector, capped at 6 A (the ratio is then exact for every pair closer than that, which includes every
    pair that could be flagged)."""
    out = {"min_distance": None, "min_distance_pair": None, "min_distance_ratio": None, "min_ratio_pair": None,
           "too_close": None, "distance_error": None}
    n = len(structure)
    lat = structure.lattice
    matrix = np.asarray(lat.matrix, dtype=float)
    frac = np.asarray(structure.frac_coords, dtype=float)
    lengths = np.linalg.norm(matrix, axis=1)
    if not (np.isfinite(matrix).all() and np.isfinite(frac).all()):
        out["distance_error"] = "non-finite lattice or coordinates"
        return out
    vol = abs(float(np.linalg.det(matrix)))
    if not lengths.min() > 0 or vol <= 1e-9 * float(np.prod(lengths)) or vol < 1e-6:
        out["distance_error"] = f"degenerate lattice (volume {vol:.3g} A^3)"
        return out
    if n > MAX_DISTANCE_ATOMS:
        out["distance_error"] = f"cell too large ({n} > {MAX_DISTANCE_ATOMS} atoms)"
        return out
    symbols = [site.specie.symbol for site in structure]
    numbers = np.array([site.specie.Z for site in structure])
    radii = _covalent_radii(numbers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lll = np.asarray(lat.lll_matrix, dtype=float)
        lll_frac = np.asarray(lat.get_lll_frac_coords(frac), dtype=float)
    # the shortest nonzero lattice vector: an atom's distance to its own nearest image
    vecs = _IMAGES[np.any(_IMAGES != 0, axis=1)] @ lll
    self_d = float(np.linalg.norm(vecs, axis=1).min())
    i_big = int(np.argmax(radii))
    best_d, best_pair = self_d, (symbols[0], symbols[0])
    best_r, best_rpair = self_d / (2 * radii[i_big]), (symbols[i_big], symbols[i_big])
    if n > 1 and n <= DENSE_DISTANCE_ATOMS:
        f = lll_frac - np.floor(lll_frac)
        diff = f[:, None, :] - f[None, :, :]  # (n, n, 3) fractional, in [-1, 1]
        diff -= np.round(diff)
        cart = (diff[:, :, None, :] + _IMAGES[None, None, :, :]) @ lll  # (n, n, 27, 3)
        d = np.sqrt((cart ** 2).sum(-1)).min(-1)
        np.fill_diagonal(d, np.inf)
        i, j = np.unravel_index(int(np.argmin(d)), d.shape)
        if d[i, j] < best_d:
            best_d, best_pair = float(d[i, j]), (symbols[i], symbols[j])
        ratio = d / (radii[:, None] + radii[None, :])
        i, j = np.unravel_index(int(np.argmin(ratio)), ratio.shape)
        if ratio[i, j] < best_r:
            best_r, best_rpair = float(ratio[i, j]), (symbols[i], symbols[j])
    elif n > 1:
        cutoff = min(self_d, 6.0) + 1e-6
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            centers, points, offsets, dist = structure.get_neighbor_list(cutoff, exclude_self=False)
        keep = ~((centers == points) & np.all(offsets == 0, axis=1))
        centers, points, dist = centers[keep], points[keep], dist[keep]
        if len(dist):
            k = int(np.argmin(dist))
            if dist[k] < best_d:
                best_d, best_pair = float(dist[k]), (symbols[centers[k]], symbols[points[k]])
            ratio = dist / (radii[centers] + radii[points])
            k = int(np.argmin(ratio))
            if ratio[k] < best_r:
                best_r, best_rpair = float(ratio[k]), (symbols[centers[k]], symbols[points[k]])
    out.update(min_distance=_num(best_d), min_distance_pair=_pair_name(*best_pair),
               min_distance_ratio=_num(best_r), min_ratio_pair=_pair_name(*best_rpair),
               too_close=bool(best_r < TOO_CLOSE_RATIO))
    return out


# ------------------------------------------------------------------------------------------ all facts
def crystal_facts(structure, *, symprec: float = SYMPREC, energies: Mapping[str, Any] | None = None,
                  flags: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every key of ``FACT_KEYS`` for one crystal (``None`` structure: a crystal that did not decode).

    ``flags``: validity flags (``validity_flags``); ``energies``: ``energy_per_atom``, ``e_form_per_atom``,
    ``e_hull`` and any other energies (appended under their own names). Never raises for a structure
    object; values it cannot compute are ``None`` with the reason in ``symmetry_error``/``distance_error``.
    """
    out = empty_facts(symprec)
    if flags:
        out.update({k: (None if flags.get(k) is None else bool(flags[k])) for k in FLAG_KEYS if k in flags})
    if energies:
        for k, v in energies.items():
            out[k] = None if v is None else _json_number(v)
    if structure is None:
        if not flags:
            out["decoded"] = False
        return out
    with warnings.catch_warnings():  # pymatgen warns about electronegativities of exotic elements
        warnings.simplefilter("ignore")
        comp = structure.composition
        out["formula"] = comp.reduced_formula
        out["num_atoms"] = len(structure)
        out["elements"] = sorted(str(e) for e in comp.elements)
        out["num_elements"] = len(out["elements"])
        vol = float(structure.volume)
        out["volume"] = _num(vol)
        if len(structure) and vol > 0 and math.isfinite(vol):
            out["volume_per_atom"] = _num(vol / len(structure))
            out["density"] = _num(structure.density)
    if flags is None or flags.get("decoded") is None:
        out["decoded"] = True
    try:
        out.update(distance_facts(structure))
    except Exception as exc:  # noqa: BLE001 - a fact that fails must not lose the crystal
        out["distance_error"] = f"{type(exc).__name__}: {exc}"[:300]
    if out["distance_error"] and out["distance_error"].startswith(("degenerate", "non-finite")):
        out["symmetry_error"] = f"not searched: {out['distance_error']}"  # spglib on such cells can hang
    else:
        try:
            out.update(symmetry_facts(structure, symprec))
        except Exception as exc:  # noqa: BLE001
            out["symmetry_error"] = f"{type(exc).__name__}: {exc}"[:300]
    return out


def _json_number(v):
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return _num(v)
    return v


PARALLEL_MIN = 2000  # facts_table runs in-process below this many crystals (spawning workers costs 5-10 s;
# one crystal ~5 ms of CPU, so below ~2,000 crystals the spawn costs more than it saves)


def _facts_item(item, symprec: float) -> dict[str, Any]:
    s, f, e = item
    return crystal_facts(s, symprec=symprec, flags=f, energies=e)


def facts_table(structures: Iterable, *, symprec: float = SYMPREC, flags: Iterable | None = None,
                energies: Iterable | None = None, workers: int | None = None, progress: bool = False,
                min_parallel: int = PARALLEL_MIN) -> list[dict[str, Any]]:
    """``crystal_facts`` of each structure, in order (``flags`` / ``energies``: parallel sequences,
    optional). From ``min_parallel`` crystals on they are computed on ``workers`` spawned processes
    (default: every CPU this process may use, ``UNIMAT_EVAL_WORKERS`` overrides; 1 = in-process)."""
    from functools import partial

    from unimat_dist.parallel import parallel_map

    structures = list(structures)
    flags = list(flags) if flags is not None else [None] * len(structures)
    energies = list(energies) if energies is not None else [None] * len(structures)
    return parallel_map(partial(_facts_item, symprec=symprec), list(zip(structures, flags, energies)),
                        workers=workers, desc="crystal facts", progress=progress, min_parallel=min_parallel)


def csv_value(v) -> str:
    """A fact as one CSV cell: lists joined by spaces, None empty, floats in full precision."""
    if v is None:
        return ""
    if isinstance(v, (list, tuple)):
        return " ".join(str(x) for x in v)
    if isinstance(v, float):
        return repr(v)
    return str(v)
