"""Raw record -> (Z, fractional coordinates, lattice parameters), the arrays the encoder takes.

CIF text goes through ``fast_cif`` first (P1 files, the common case) and falls back to pymatgen's
``CifParser`` for everything else; POSCAR text uses pymatgen; ASE frames arrive as arrays already.
Every failure is a ``Rejected`` with a reason, never a bare exception.
"""
from __future__ import annotations

import warnings
from typing import Callable, Literal

import numpy as np

from unimat_dist.representation.periodic_table import Z_OF

from .fast_cif import NotFastPath, check_listed_sites, parse_p1_cif
from .quarantine import Rejected
from .records import RawRecord

CifParserChoice = Literal["fast", "pymatgen"]
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]


def pymatgen_arrays(structure) -> Arrays:
    """Arrays of a pymatgen structure; disorder and non-element species are rejected with reasons."""
    if not structure.is_ordered:
        bad = next(i for i, site in enumerate(structure) if not site.is_ordered)
        raise Rejected("disordered", f"site {bad} holds {structure[bad].species}; only ordered crystals are represented")
    z = []
    for i, sp in enumerate(structure.species):
        symbol = getattr(sp, "symbol", None)
        if symbol not in Z_OF:  # DummySpecies ("X", vacancies) carry no real element
            raise Rejected("unknown_element", f"site {i} holds {sp!s}, which is not an element")
        z.append(Z_OF[symbol])
    return np.asarray(z, dtype=np.int64), np.asarray(structure.frac_coords), np.asarray(structure.lattice.parameters)


def cif_arrays_pymatgen(text: str) -> Arrays:
    from unimat_dist.datasets import structure_from_cif

    try:
        structure = structure_from_cif(text)
    except ValueError as exc:
        raise Rejected("parse_error", str(exc)) from None
    return pymatgen_arrays(structure)


def poscar_arrays(text: str) -> Arrays:
    from pymatgen.io.vasp import Poscar

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Poscar.from_str(text).structure
    except Exception as exc:  # pymatgen raises many types for malformed POSCARs
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Rejected("parse_error", f"unparseable POSCAR ({msg})") from None
    return pymatgen_arrays(structure)


def atoms_arrays(atoms) -> Arrays:
    """Arrays of an ASE ``Atoms`` frame (``not_periodic`` unless the cell is 3D and fully periodic)."""
    if not all(atoms.pbc) or atoms.cell.rank < 3:
        raise Rejected("not_periodic", f"pbc={atoms.pbc.tolist()}, cell rank {atoms.cell.rank}; a crystal needs a 3D periodic cell")
    z = np.asarray(atoms.numbers, dtype=np.int64)
    frac = atoms.cell.scaled_positions(atoms.positions)
    return z, frac, np.asarray(atoms.cell.cellpar(), dtype=np.float64)


def record_arrays(record: RawRecord, cif_parser: CifParserChoice = "fast",
                  check: Callable[[np.ndarray], None] | None = None) -> tuple[Arrays, str]:
    """(arrays, parser used: "fast" | "pymatgen" | "arrays") of a record, or ``Rejected``.

    ``check(z)`` runs on the atomic numbers as early as each path knows them (the CIF's listed sites
    before either parser builds anything quadratic; an ASE frame's atoms; pymatgen's result).
    """
    if record.kind == "rejected":
        assert record.rejected is not None
        raise record.rejected
    if record.kind == "arrays":
        assert record.arrays is not None
        if check is not None:
            check(record.arrays[0])
        return record.arrays, "arrays"
    text = record.text or ""
    if not text.strip():
        raise Rejected("parse_error", "empty structure text")
    if record.kind == "cif":
        if cif_parser == "fast":
            try:
                return parse_p1_cif(text, check), "fast"
            except NotFastPath:
                pass
        elif check is not None:  # the fast reader's scan only: the cheap listed-site check before pymatgen
            check_listed_sites(text, check)
        return cif_arrays_pymatgen(text), "pymatgen"
    if record.kind == "poscar":
        return poscar_arrays(text), "pymatgen"
    raise ValueError(f"{record.id}: unknown record kind {record.kind!r}")
