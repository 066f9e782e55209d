"""One run's crystals on disk, in the formats people open them with, plus one table of their facts.

    from unimat_dist.crystal_files import write_crystal_files
    written = write_crystal_files(out_dir, structures, facts)   # facts: crystal_facts(...) per structure

Layout (``<name>`` = ``sample_000042`` for sample index 42 unless names are given):

    cif/<name>.cif          P1 CIF (pymatgen ``CifWriter``), the cell as generated
    cif_sym/<name>.cif      symmetrised CIF (``CifWriter(symprec=...)``: the refined conventional cell and
                            the space group's operations), only for crystals whose group at ``symprec`` is
                            above P1
    poscar/<name>.vasp      VASP POSCAR (pymatgen ``Poscar``; the comment line is ``<name> <formula>``)
    samples.extxyz          every decoded crystal as one frame, in index order; ``atoms.info`` holds
                            ``index``, ``name`` and every key of ``crystal_facts.FACT_KEYS`` (``None`` is
                            written as the string ``"none"``, ``elements`` as a JSON list string, e.g.
                            ``'["O", "Ti"]'``, because extxyz reads a bare ``F`` as False);
                            ``facts_from_info`` turns an ``info`` dict back into the facts
    summary.csv             the per-crystal table: one row per sample (also those that did not decode,
                            with ``decoded`` False and empty facts), columns ``TABLE_KEYS``

Every file is written atomically (a temporary file in the same folder, then ``os.replace``), so a reader
never sees half a CIF; a crash leaves ``.tmp-*`` files that ``sweep_partials`` of the caller removes.
Each format reads back with pymatgen (``Structure.from_file``) and ASE (``ase.io.read``), tested in
``tests/test_crystal_files.py``.

The table (``TABLE_KEYS``, stable; the gallery reads it): ``index`` (sample index), ``name``, every key of
``FACT_KEYS`` (see ``unimat_dist.crystal_facts``), then the paths of the crystal's files relative to the
run folder: ``cif``, ``cif_sym``, ``poscar`` (``None``/empty when not written) and ``extxyz_frame`` (its
frame number in ``samples.extxyz``, ``None`` for a crystal that did not decode). ``unimat sample`` stores
the same rows in ``summary.json`` under ``"crystals"``.
"""
from __future__ import annotations

import csv
import io
import json
import os
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

from .crystal_facts import FACT_KEYS, csv_value

TEMP_PREFIX = ".tmp-"
FILE_KEYS = ("cif", "cif_sym", "poscar", "extxyz_frame")
TABLE_KEYS = ("index", "name", *FACT_KEYS, *FILE_KEYS)
EXTXYZ_NAME = "samples.extxyz"  # the name unimat sample and unimat results always used
CSV_NAME = "summary.csv"
DIRS = ("cif", "cif_sym", "poscar")


def sample_name(index: int) -> str:
    return f"sample_{index:06d}"


def write_text_atomic(path: str | Path, text: str) -> Path:
    """``text`` to ``path`` via a temporary file in the same folder and ``os.replace`` (no fsync: many
    small files; atomic against a killed process, which is what readers of a run folder meet)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TEMP_PREFIX}{uuid.uuid4().hex[:8]}-{path.name}"
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# ------------------------------------------------------------------------------------------ formats
def p1_cif(structure) -> str:
    from pymatgen.io.cif import CifWriter

    return str(CifWriter(structure))


def symmetrized_cif(structure, symprec: float) -> str:
    from pymatgen.io.cif import CifWriter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return str(CifWriter(structure, symprec=symprec))


def poscar_text(structure, comment: str) -> str:
    from pymatgen.io.vasp import Poscar

    return Poscar(structure, comment=comment).get_str()


def info_value(v):
    """A fact as an extxyz ``info`` value (see the module docstring)."""
    if v is None:
        return "none"
    if isinstance(v, (list, tuple)):
        return json.dumps([str(x) for x in v])
    return v


def facts_info(facts: dict[str, Any]) -> dict[str, Any]:
    return {k: info_value(v) for k, v in facts.items()}


def facts_from_info(info: dict[str, Any]) -> dict[str, Any]:
    """The facts of an extxyz frame read back by ASE (``"none"`` -> None, ``elements`` -> list, numpy
    scalars -> Python numbers)."""
    out: dict[str, Any] = {}
    for k, v in info.items():
        if isinstance(v, str) and v == "none":
            v = None
        elif k == "elements" and isinstance(v, str):
            v = json.loads(v)
        elif hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
            v = v.item()
        out[k] = v
    return out


def extxyz_text(frames: Sequence[tuple[Any, dict[str, Any]]]) -> str:
    """Multi-frame extxyz of ``(structure, info)`` pairs."""
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = []
    for s, info in frames:
        a = AseAtomsAdaptor.get_atoms(s)
        a.info.update(facts_info(info))
        atoms.append(a)
    buf = io.StringIO()
    if atoms:
        write(buf, atoms, format="extxyz")
    return buf.getvalue()


def table_csv(rows: Iterable[dict[str, Any]], keys: Sequence[str] = TABLE_KEYS) -> str:
    """The per-crystal table as CSV text: ``keys`` as columns, then any extra keys of the rows (other
    energies) in first-seen order."""
    rows = list(rows)
    extra = []
    for r in rows:
        extra += [k for k in r if k not in keys and k not in extra]
    columns = list(keys) + extra
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([csv_value(r.get(k)) for k in columns])
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ a run
def write_crystal_files(
    out_dir: str | Path,
    structures: Sequence,
    facts: Sequence[dict[str, Any]],
    names: Sequence[str] | None = None,
    *,
    formats: Iterable[str] = ("cif", "cif_sym", "poscar", "extxyz"),
    symprec: float | None = None,
    csv_name: str | None = CSV_NAME,
    extxyz_name: str = EXTXYZ_NAME,
    extra: Sequence[dict[str, Any]] | None = None,
) -> tuple[list[Path], list[dict[str, Any]]]:
    """Write the crystals (``None`` entries: not decoded, rows only) and the table; returns
    ``(files written, table rows)``. ``symprec`` of the symmetrised CIF defaults to each crystal's
    ``facts["symprec"]``; ``formats`` is a subset of cif, cif_sym, poscar, extxyz; ``extra``: per crystal,
    more columns (e.g. a source id), appended after ``TABLE_KEYS`` in the rows, the CSV and the frames."""
    formats = set(formats)
    unknown = formats - {"cif", "cif_sym", "poscar", "extxyz"}
    if unknown:
        raise ValueError(f"unknown crystal formats {sorted(unknown)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(names) if names is not None else [sample_name(i) for i in range(len(structures))]
    files: list[Path] = []
    rows: list[dict[str, Any]] = []
    frames = []
    extra = list(extra) if extra is not None else [{}] * len(structures)
    for i, (s, f, name, more) in enumerate(zip(structures, facts, names, extra)):
        more = {k: v for k, v in more.items() if k not in f and k not in TABLE_KEYS}  # never shadows a key
        row: dict[str, Any] = {"index": i, "name": name, **f, **dict.fromkeys(FILE_KEYS), **more}
        if s is not None:
            if "cif" in formats:
                files.append(write_text_atomic(out / "cif" / f"{name}.cif", p1_cif(s)))
                row["cif"] = f"cif/{name}.cif"
            if "cif_sym" in formats and (f.get("spacegroup_number") or 1) > 1:
                tol = symprec if symprec is not None else (f.get("symprec") or 0.1)
                try:
                    text = symmetrized_cif(s, tol)
                except Exception:  # noqa: BLE001 - the P1 CIF stands; no symmetrised one for this crystal
                    text = None
                if text:
                    files.append(write_text_atomic(out / "cif_sym" / f"{name}.cif", text))
                    row["cif_sym"] = f"cif_sym/{name}.cif"
            if "poscar" in formats:
                comment = f"{name} {f.get('formula') or s.composition.reduced_formula}"
                files.append(write_text_atomic(out / "poscar" / f"{name}.vasp", poscar_text(s, comment)))
                row["poscar"] = f"poscar/{name}.vasp"
            if "extxyz" in formats:
                row["extxyz_frame"] = len(frames)
                frames.append((s, {"index": i, "name": name, **f, **more}))
        rows.append(row)
    if "extxyz" in formats and frames:
        files.append(write_text_atomic(out / extxyz_name, extxyz_text(frames)))
    if csv_name:
        files.append(write_text_atomic(out / csv_name, table_csv(rows)))
    return files, rows


def read_table_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a ``summary.csv`` as strings (``""`` = None)."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
