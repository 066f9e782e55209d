"""Read and write the structure sets the evaluator consumes: a folder of CIFs, an extxyz file or a
CDVAE-style CSV (``.csv`` / ``.csv.gz``, a multi-line CIF per row in column ``cif``).

Every reader returns :class:`StructureRecord` objects in file order. A record whose structure cannot
be built keeps ``structure=None`` and the reason in ``error``: the proxy protocol counts such samples
as invalid instead of dropping them, so they must survive loading.

``canonical_structure`` rebuilds a structure the way CDVAE's evaluation does (lattice from its six
parameters, optionally after Niggli reduction), so that distances and fingerprints are computed on the
same cell the published numbers used.
"""
from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

CSV_SUFFIXES = (".csv", ".csv.gz")
EXTXYZ_SUFFIXES = (".extxyz", ".xyz", ".extxyz.gz", ".xyz.gz")


@dataclass
class StructureRecord:
    """One structure of a set. ``properties`` holds numeric columns/info keys (e.g. DFT energies),
    ``metadata`` the rest (e.g. ``target_id`` for composition-conditioned samples)."""

    id: str
    structure: Any | None  # pymatgen Structure, None when it could not be built
    error: str | None = None
    properties: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


def file_checksum(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (or of a folder's sorted file names and bytes)."""
    h = hashlib.sha256()
    p = Path(path)
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(chunk), b""):
                h.update(block)
    return h.hexdigest()


def _split_kind(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        return "cif_dir"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    if name.endswith(EXTXYZ_SUFFIXES):
        return "extxyz"
    if name.endswith(".cif"):
        return "cif_file"
    raise ValueError(
        f"{path}: unknown structure-set format; expected a folder of .cif files, an .extxyz file or a "
        f"CDVAE CSV (.csv/.csv.gz)"
    )


def load_structures(path: str | Path, limit: int | None = None, id_column: str = "material_id") -> list[StructureRecord]:
    """Load a structure set (folder of CIFs, extxyz, CDVAE CSV or a single CIF) as records.

    ``limit`` keeps the first N records (file order; sorted file names for a folder).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder")
    kind = _split_kind(p)
    if kind == "csv":
        return _load_csv(p, limit, id_column)
    if kind == "extxyz":
        return _load_extxyz(p, limit)
    files = sorted(p.glob("*.cif")) if kind == "cif_dir" else [p]
    if kind == "cif_dir" and not files:
        # a `unimat sample` output folder: its P1 CIFs (cif/) or, with --format extxyz, its samples.extxyz
        if any((p / "cif").glob("*.cif")):
            return load_structures(p / "cif", limit, id_column)
        if (p / "samples.extxyz").is_file():
            return _load_extxyz(p / "samples.extxyz", limit)
        raise ValueError(f"{p}: folder holds no .cif files (nor cif/*.cif or samples.extxyz of a unimat sample run)")
    out = []
    for f in files[: limit if limit is not None else None]:
        out.append(_record_from_cif(f.read_text(encoding="utf-8", errors="replace"), f.stem))
    return out


def _record_from_cif(text: str, rid: str, properties=None, metadata=None) -> StructureRecord:
    from unimat_dist.datasets import structure_from_cif

    meta = dict(metadata or {})
    if "__" in rid and "target_id" not in meta:
        meta["target_id"] = rid.split("__", 1)[0]  # <target>__<sample>.cif names a CSP sample
    try:
        s = structure_from_cif(text, rid)
        return StructureRecord(rid, s, None, dict(properties or {}), meta)
    except ValueError as exc:
        return StructureRecord(rid, None, str(exc), dict(properties or {}), meta)


def _load_csv(p: Path, limit: int | None, id_column: str) -> list[StructureRecord]:
    from unimat_dist.datasets import iter_cdvae_csv

    out = []
    for rec in iter_cdvae_csv(p, id_column):
        if limit is not None and len(out) >= limit:
            break
        props = {k: v for k, v in rec.properties.items() if v is not None}
        out.append(_record_from_cif(rec.cif, rec.id, props, rec.metadata))
    return out


def _load_extxyz(p: Path, limit: int | None) -> list[StructureRecord]:
    from ase.io import iread
    from pymatgen.io.ase import AseAtomsAdaptor

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, atoms in enumerate(iread(str(p), index=":", format="extxyz")):
            if limit is not None and len(out) >= limit:
                break
            info = dict(atoms.info)
            rid = str(info.pop("id", info.pop("material_id", i)))
            props = {k: float(v) for k, v in info.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            meta = {k: v for k, v in info.items() if k not in props}
            try:
                if not all(atoms.pbc) or abs(atoms.cell.volume) < 1e-12:
                    raise ValueError("not a periodic 3-D cell")
                s = AseAtomsAdaptor.get_structure(atoms)
                out.append(StructureRecord(rid, s, None, props, meta))
            except Exception as exc:  # ase/pymatgen raise many types for broken frames
                out.append(StructureRecord(rid, None, f"{rid}: {exc}", props, meta))
    return out


def canonical_structure(structure, niggli: bool):
    """Rebuild ``structure`` like CDVAE's ``build_crystal``: optional Niggli reduction, then a lattice
    built from its six parameters with the same species and fractional coordinates.

    Raises ``ValueError`` when the cell is degenerate (non-finite parameters, zero volume).
    """
    from pymatgen.core import Lattice, Structure

    s = structure
    if not s.is_ordered:
        raise ValueError("disordered (partially occupied) structure")
    params = list(s.lattice.parameters)
    if not all(math.isfinite(x) for x in params) or min(params[:3]) <= 0:
        raise ValueError(f"degenerate lattice {params}")
    if niggli:
        s = s.get_reduced_structure()
    lattice = Lattice.from_parameters(*s.lattice.parameters)
    return Structure(lattice=lattice, species=s.species, coords=s.frac_coords, coords_are_cartesian=False)


def write_cifs(structures: Iterable[tuple[str, Any]], folder: str | Path) -> list[Path]:
    """Write ``(id, structure)`` pairs as ``<folder>/<id>.cif``; returns the paths."""
    from pymatgen.io.cif import CifWriter

    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for rid, s in structures:
        path = d / f"{rid}.cif"
        CifWriter(s).write_file(str(path))
        paths.append(path)
    return paths


def write_extxyz(records: Sequence[StructureRecord], path: str | Path) -> Path:
    """Write records (with their ``properties``/``metadata``) to one extxyz file."""
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    frames = []
    for r in records:
        if r.structure is None:
            continue
        atoms = AseAtomsAdaptor.get_atoms(r.structure)
        atoms.info["id"] = r.id
        atoms.info.update({k: v for k, v in r.properties.items() if v is not None})
        atoms.info.update({k: v for k, v in r.metadata.items() if isinstance(v, (str, int, float))})
        frames.append(atoms)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    write(str(p), frames, format="extxyz")
    return p
