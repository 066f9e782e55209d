"""Elemental reference energies (chemical potentials) computed with the same potential (CHGNet).

A formation energy per atom is ``(E_corrected - sum_i n_i mu_i) / N`` where ``mu_i`` is the energy per
atom of element i's lowest-energy structure. Materials Project uses its DFT ground states; here ``mu_i``
is the lowest CHGNet energy per atom over a set of candidate structures of the element, each relaxed with
CHGNet (positions + cell):

* prototypes: fcc, bcc, hcp, simple cubic and diamond at lattice constants from the atomic radius, a
  dimer in a 12 A box (H, N, O, F, Cl, Br, I form molecular solids) and a single atom in a 12 A box;
* the single-element structures of the bundled MP-20 subset (real MP structures, some ground states);
* a few random symmetric structures (pyxtal, 2-8 atoms) for elements with complex, non-molecular
  ground states (``COMPLEX``).

The result is cached in ``data/chgnet_elemental_refs.json`` (made once with
``python -m unimat_dist.evaluation.elemental_refs``; see the JSON for its run time) so evaluations never
recompute it.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

REFS_PATH = Path(__file__).resolve().parent / "data" / "chgnet_elemental_refs.json"
MOLECULAR = ("H", "N", "O", "F", "Cl", "Br", "I")
# Elements whose ground states are neither close-packed nor diamond; random structures are tried for
# them. Not for the molecular ones: their ground states are molecular solids (approximated by the dimer)
# and random polymeric cells only find spurious CHGNet minima below them (seen for Cl).
COMPLEX = ("B", "C", "P", "S", "Se", "Te", "As", "Sb", "Bi", "Ga", "In", "Sn", "Ge", "Si", "Hg", "Mn",
           "Pa", "U", "Np", "Pu", "Ce", "Sm")
BOX = 12.0  # A, larger than twice CHGNet's 5 A cut-off


@lru_cache(maxsize=1)
def load_elemental_references(path: str | Path | None = None) -> dict[str, float]:
    """``{symbol: mu}`` in eV/atom (CHGNet) from the cached JSON."""
    p = Path(path) if path else REFS_PATH
    if not p.exists():
        raise FileNotFoundError(f"{p}: elemental references missing; run `python -m unimat_dist.evaluation.elemental_refs`")
    data = json.loads(p.read_text())
    return {el: float(v["mu"]) for el, v in data["elements"].items()}


def prototype_candidates(symbol: str) -> list[tuple[str, object]]:
    """(label, structure) prototypes of one element."""
    from pymatgen.core import Element, Lattice, Structure

    el = Element(symbol)
    r = float(el.atomic_radius or el.atomic_radius_calculated or 1.5)
    out = [
        ("fcc", Structure(Lattice.cubic(2 * math.sqrt(2) * r), [symbol] * 4,
                          [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])),
        ("bcc", Structure(Lattice.cubic(4 * r / math.sqrt(3)), [symbol] * 2, [[0, 0, 0], [0.5, 0.5, 0.5]])),
        ("hcp", Structure(Lattice.hexagonal(2 * r, 2 * r * 1.633), [symbol] * 2,
                          [[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]])),
        ("sc", Structure(Lattice.cubic(2 * r), [symbol], [[0, 0, 0]])),
        ("diamond", Structure(Lattice.cubic(8 * r / math.sqrt(3)), [symbol] * 8,
                              [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5],
                               [0.25, 0.25, 0.25], [0.75, 0.75, 0.25], [0.75, 0.25, 0.75], [0.25, 0.75, 0.75]])),
        ("atom_in_box", Structure(Lattice.cubic(BOX), [symbol], [[0, 0, 0]])),
    ]
    if symbol in MOLECULAR:
        d = 2 * float(el.atomic_radius or 0.5) * 0.9
        out.append(("dimer_in_box", Structure(Lattice.cubic(BOX), [symbol] * 2, [[0, 0, 0], [d / BOX, 0, 0]])))
    return out


@lru_cache(maxsize=1)
def _bundled_elemental_structures() -> dict[str, list]:
    from unimat_dist.datasets.registry import bundled_path

    from .structures_io import load_structures

    found: dict[str, list] = {}
    for split in ("train", "val", "test"):
        p = bundled_path("mp_20_subset", split)
        if p is None:
            continue
        for rec in load_structures(p):
            s = rec.structure
            if s is not None and len(s.composition.elements) == 1:
                found.setdefault(s.composition.elements[0].symbol, []).append((f"mp_20_subset:{rec.id}", s))
    return found


def dataset_candidates(symbol: str) -> list[tuple[str, object]]:
    """Single-element structures of ``symbol`` in the bundled MP-20 subset."""
    return list(_bundled_elemental_structures().get(symbol, []))


def random_candidates(symbol: str, n: int, seed: int) -> list[tuple[str, object]]:
    from .airss import random_symmetric_structure

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        n_atoms = int(rng.integers(2, 9))
        s = random_symmetric_structure({symbol: n_atoms}, rng, volume_factor=1.0)
        if s is not None:
            out.append((f"random{i}_{n_atoms}", s))
    return out


def _relax_candidate(args):
    label, structure, steps, fmax = args
    from .potential import relax, static_energies

    if label == "atom_in_box":
        e = static_energies([structure])[0]
        return label, (e if e is not None else None), True, None
    res = relax(structure, steps=steps, fmax=fmax)
    return label, res.e_final_per_atom, res.converged, res.error


def build_elemental_references(elements, n_random: int = 3, steps: int = 200, fmax: float = 0.05,
                               workers: int | None = None, seed: int = 0) -> dict:
    """Relax all candidates of ``elements`` and keep the lowest energy per atom of each element."""
    from unimat_dist.parallel import parallel_map

    tasks, owner = [], []
    for i, el in enumerate(elements):
        cands = prototype_candidates(el) + dataset_candidates(el)
        if el in COMPLEX:
            cands += random_candidates(el, n_random, seed + i)
        for label, s in cands:
            tasks.append((label, s, steps, fmax))
            owner.append(el)
    results = parallel_map(_relax_candidate, tasks, workers=workers, desc="elemental references", min_parallel=2)
    table: dict[str, dict] = {}
    for el, (label, e, conv, err) in zip(owner, results):
        row = table.setdefault(el, {"candidates": {}})
        row["candidates"][label] = {"e_per_atom": e, "converged": conv, "error": err}
    for el, row in table.items():
        usable = {k: v for k, v in row["candidates"].items() if v["e_per_atom"] is not None}
        best = min(usable, key=lambda k: usable[k]["e_per_atom"])
        row.update(mu=usable[best]["e_per_atom"], source=best, converged=usable[best]["converged"])
    return table


def main(argv=None) -> int:
    from importlib.metadata import version

    from pymatgen.core import Element

    from .potential import MODEL_NAME

    ap = argparse.ArgumentParser(description="Compute CHGNet elemental reference energies")
    ap.add_argument("--out", default=str(REFS_PATH))
    ap.add_argument("--elements", default="", help="comma-separated symbols (default: H..Pu)")
    ap.add_argument("--n-random", type=int, default=3)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    elements = [e for e in args.elements.split(",") if e] or [Element.from_Z(z).symbol for z in range(1, 95)]
    t0 = time.time()
    table = build_elemental_references(elements, n_random=args.n_random, steps=args.steps, workers=args.workers)
    doc = {
        "description": "CHGNet elemental chemical potentials (eV/atom): lowest relaxed energy per "
                       "atom over prototypes, bundled MP-20 single-element structures and random symmetric "
                       "structures; see unimat_dist/evaluation/elemental_refs.py",
        "model": f"CHGNet {MODEL_NAME}",
        "chgnet_version": version("chgnet"),
        "relax": {"optimizer": "FIRE + FrechetCellFilter", "steps": args.steps, "fmax": 0.05},
        "n_random": args.n_random,
        "seconds": round(time.time() - t0, 1),
        "elements": table,
    }
    Path(args.out).write_text(json.dumps(doc, indent=1, sort_keys=True))
    print(f"wrote {args.out} ({len(table)} elements, {doc['seconds']} s)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
