"""Source formats -> deterministic work units -> streams of ``RawRecord``.

Planning (driver, cheap) cuts a source into ``WorkUnit``s of at most ``records_per_unit`` records;
reading (worker) streams one unit's records, so no process ever holds more than one record's text.

* ``cdvae-csv``: CDVAE benchmark CSVs (one multi-line CIF per row). A unit is a byte range of rows
  found by ``csv_index`` (one pass over the file); units never span files. ``source.dataset`` names a
  registry data set (each bundled/downloaded split file becomes its own split), ``source.uri`` a CSV or
  a folder holding ``{train,val,test}.csv[.gz]``.
* ``gnome``: the GNoME release layout (``data/GNOME_FORMAT.md``): ``stable_materials_summary.csv``
  (one row per material, no coordinates) + ``by_id.zip`` holding ``by_id/<MaterialId>.CIF``. A unit is
  a byte range of summary rows; each worker indexes the zip once (``zip_index``: 29 bytes per member,
  remote archives staged to node-local scratch) and reads the members it needs. Columns are matched
  case-insensitively.
* ``structure-dir``: a folder or ``.zip`` of CIF / POSCAR / extxyz / ASE ``.traj`` files (``.gz``
  allowed); a unit is a run of files in sorted order; multi-block CIFs and multi-frame files yield one
  record per block/frame (id ``path#k``). Hidden files and ``__MACOSX`` are ignored; anything else
  unrecognised is quarantined as ``unsupported_file``.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
import os
import re
import sys
import zipfile
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, Iterator

from unimat_dist.data.storage import filesystem, join_uri, open_input

from .csv_index import RangeReader, index_csv, skip_to
from .quarantine import Rejected
from .records import RawRecord
from .zip_index import ZipIndex, local_copy

csv.field_size_limit(sys.maxsize)

FORMATS = ("cdvae-csv", "gnome", "structure-dir")
GNOME_SUMMARY = "stable_materials_summary.csv"
GNOME_ARCHIVE = "by_id.zip"

# GNoME summary columns that are targets (canonical snake_case names); the rest becomes metadata.
GNOME_PROPERTIES = {
    "formation energy per atom": "formation_energy_per_atom",
    "decomposition energy per atom": "decomposition_energy_per_atom",
    "bandgap": "band_gap",
    "corrected energy": "corrected_energy",
    "uncorrected energy": "uncorrected_energy",
    "decomposition energy per atom all": "decomposition_energy_per_atom_all",
    "decomposition energy per atom relative": "decomposition_energy_per_atom_relative",
    "decomposition energy per atom mp": "decomposition_energy_per_atom_mp",
    "decomposition energy per atom mp oqmd": "decomposition_energy_per_atom_mp_oqmd",
}
_CDVAE_META_NUMERIC = ("spacegroup.number",)  # numeric columns that are labels, not targets


@dataclass(frozen=True)
class WorkUnit:
    """One task's share of a source: a byte range of CSV rows, or a run of files."""

    index: int
    kind: str  # "cdvae-rows" | "gnome-rows" | "files"
    uri: str  # the CSV, or the folder/zip of structure files
    split: str | None = None  # split fixed by the source file, else by composition
    start: int = 0  # byte range [start, stop) of the rows (CSV kinds)
    stop: int = 0
    first_row: int = 0  # data-row number of the first row (CSV kinds)
    header: str = ""  # the CSV header row
    archive: str = ""  # GNoME: the CIF zip
    files: tuple[str, ...] = ()  # structure-dir: paths relative to ``uri``

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["files"] = list(self.files)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "WorkUnit":
        return cls(**{**d, "files": tuple(d.get("files", ()))})

    def digest(self) -> str:
        """Identity of the unit's input (resuming skips a unit only if this still matches)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class SourcePlan:
    units: list[WorkUnit]
    description: dict[str, Any] = field(default_factory=dict)  # for the manifest's "source"


# ----------------------------------------------------------------------------------------------- planning
def _csv_units(uri: str, kind: str, split: str | None, records_per_unit: int, limit: int | None,
               storage_options: dict | None, start_index: int, archive: str = "") -> tuple[list[WorkUnit], int]:
    with open_input(uri, "rb", storage_options, compression="infer") as fh:
        idx = index_csv(fh, records_per_unit, limit)
    header = idx.header.decode("utf-8-sig")
    units = [
        WorkUnit(
            index=start_index + k,
            kind=kind,
            uri=uri,
            split=split,
            start=idx.unit_offsets[k],
            stop=idx.unit_offsets[k + 1],
            first_row=idx.unit_rows[k],
            header=header,
            archive=archive,
        )
        for k in range(idx.units)
    ]
    return units, idx.rows


def cdvae_files(uri: str | None, dataset: str | None, storage_options: dict | None) -> tuple[list[tuple[str | None, str]], list[str]]:
    """[(split or None, csv uri)] and provenance notes for a CDVAE source."""
    from unimat_dist.datasets.registry import SPLITS, resolve_split

    if dataset:
        files, notes = [], []
        for split in SPLITS:
            try:
                r = resolve_split(dataset, split, allow_substitute=False)
            except FileNotFoundError:
                notes.append(f"{dataset}/{split}: not available (neither downloaded nor bundled); not ingested")
                continue
            files.append((split, str(r.path)))
            notes.append(r.note)
        if not files:
            raise FileNotFoundError(f"data set {dataset!r} has no split available here")
        return files, notes
    if not uri:
        raise ValueError("source: cdvae-csv needs source.uri (a CSV or a folder of split CSVs) or source.dataset")
    fs, path = filesystem(uri, storage_options)
    if fs.isdir(path):
        names = {os.path.basename(p): p for p in fs.ls(path, detail=False)}
        files = []
        for split in SPLITS:
            for suffix in (".csv", ".csv.gz"):
                if split + suffix in names:
                    files.append((split, join_uri(uri, split + suffix)))
                    break
        if not files:
            raise FileNotFoundError(f"{uri}: no train/val/test .csv or .csv.gz files")
        return files, [f"{uri}: split files {[s for s, _ in files]}"]
    if not fs.exists(path):
        raise FileNotFoundError(f"{uri}: no such file")
    stem = os.path.basename(path).split(".")[0]
    return [(stem if stem in SPLITS else None, uri)], []


def gnome_files(uri: str, storage_options: dict | None) -> tuple[str, str]:
    """(summary CSV uri, by_id zip uri) of a GNoME release folder (or of its summary CSV)."""
    fs, path = filesystem(uri, storage_options)
    if path.endswith(".csv"):
        root, summary = uri.rsplit("/", 1)[0] if "/" in uri else ".", uri
    else:
        root = uri
        summary = join_uri(uri, GNOME_SUMMARY)
        if not fs.exists(filesystem(summary, storage_options)[1]):
            nested = join_uri(uri, "gnome_data")
            if fs.exists(filesystem(join_uri(nested, GNOME_SUMMARY), storage_options)[1]):
                root, summary = nested, join_uri(nested, GNOME_SUMMARY)
            else:
                raise FileNotFoundError(f"{uri}: no {GNOME_SUMMARY} (expected the GNoME release layout)")
    archive = join_uri(root, GNOME_ARCHIVE)
    if not fs.exists(filesystem(archive, storage_options)[1]):
        raise FileNotFoundError(f"{root}: no {GNOME_ARCHIVE} next to {GNOME_SUMMARY}")
    return summary, archive


_IGNORED = re.compile(r"(^|/)(\.[^/]*|__MACOSX)(/|$)")


def list_structure_files(uri: str, storage_options: dict | None) -> list[str]:
    """Sorted relative paths of the files in a folder or zip (hidden files and __MACOSX skipped)."""
    if uri.lower().endswith(".zip"):
        names = [i.filename for i in _open_zip(uri, _opts_key(storage_options)).infolist() if not i.is_dir()]
    else:
        fs, path = filesystem(uri, storage_options)
        if not fs.isdir(path):
            raise FileNotFoundError(f"{uri}: not a folder or .zip of structure files")
        base = path.rstrip("/") + "/"
        names = [p[len(base):] if p.startswith(base) else p for p in fs.find(path)]
    return sorted(n for n in names if not _IGNORED.search(n))


def plan_source(source, records_per_unit: int, storage_options: dict | None) -> SourcePlan:
    """Cut a source (``IngestConfig.source``) into work units; deterministic for unchanged input."""
    if source.format == "cdvae-csv":
        files, notes = cdvae_files(source.uri, source.dataset, storage_options)
        units: list[WorkUnit] = []
        described = []
        for split, uri in files:
            new, rows = _csv_units(uri, "cdvae-rows", split, records_per_unit, source.limit, storage_options, len(units))
            units += new
            described.append({"uri": uri, "split": split, "rows": rows})
        desc = {"format": source.format, "uri": source.uri, "dataset": source.dataset, "files": described, "notes": notes}
        return SourcePlan(units, desc)
    if source.format == "gnome":
        if not source.uri:
            raise ValueError("source: gnome needs source.uri (the release folder)")
        summary, archive = gnome_files(source.uri, storage_options)
        units, rows = _csv_units(summary, "gnome-rows", None, records_per_unit, source.limit, storage_options, 0, archive)
        desc = {"format": source.format, "uri": source.uri, "files": [{"uri": summary, "rows": rows}, {"uri": archive}],
                "notes": ["GNoME data: CC BY-NC 4.0 (non-commercial); cite Merchant et al., Nature 624, 80-85 (2023)"]}
        return SourcePlan(units, desc)
    if source.format == "structure-dir":
        if not source.uri:
            raise ValueError("source: structure-dir needs source.uri (a folder or .zip)")
        names = list_structure_files(source.uri, storage_options)
        if source.limit is not None:
            names = names[: source.limit]
        if not names:
            raise FileNotFoundError(f"{source.uri}: no structure files")
        units = [
            WorkUnit(index=k, kind="files", uri=source.uri, files=tuple(names[i : i + records_per_unit]))
            for k, i in enumerate(range(0, len(names), records_per_unit))
        ]
        desc = {"format": source.format, "uri": source.uri, "files": [{"uri": source.uri, "count": len(names)}], "notes": []}
        return SourcePlan(units, desc)
    raise ValueError(f"source.format must be one of {list(FORMATS)}, got {source.format!r}")


# ----------------------------------------------------------------------------------------------- reading
def _opts_key(storage_options: dict | None) -> str:
    return json.dumps(storage_options or {}, sort_keys=True)


def _open_zip(uri: str, opts_key: str) -> zipfile.ZipFile:
    """For listing members on the driver (workers use ``_archive``)."""
    return zipfile.ZipFile(open_input(uri, "rb", json.loads(opts_key)))


class Archive:
    """An open zip (node-local copy) and its compact member index, kept per worker process."""

    def __init__(self, uri: str, storage_options: dict | None, scratch_dir: str | None) -> None:
        self.uri = uri
        self.fh = open(local_copy(uri, storage_options, scratch_dir), "rb")
        self.index = ZipIndex.build(self.fh)

    def read(self, name: str) -> bytes | None:
        return self.index.read(self.fh, name)


@lru_cache(maxsize=2)
def _archive(uri: str, opts_key: str, scratch_dir: str | None) -> Archive:
    """Built once per worker: the index of a 2.2M-member archive takes ~5 s and ~60 MB."""
    return Archive(uri, json.loads(opts_key), scratch_dir)


def _rows(unit: WorkUnit, storage_options: dict | None) -> Iterator[tuple[int, dict[str, str]]]:
    """(data-row number, row dict) of a CSV unit, streamed from its byte range."""
    with open_input(unit.uri, "rb", storage_options, compression="infer") as fh:
        skip_to(fh, unit.start)
        text = io.TextIOWrapper(io.BufferedReader(RangeReader(fh, unit.stop - unit.start)), encoding="utf-8", newline="")
        fieldnames = next(csv.reader([unit.header]))
        reader = csv.DictReader(text, fieldnames=fieldnames)
        for i, row in enumerate(reader):
            if None in row:
                raise ValueError(f"{unit.uri}: row {unit.first_row + i} has more fields than the header")
            yield unit.first_row + i, row


def _number(value: str | None) -> tuple[float | None, bool]:
    """(value, is_number); NaN -> (None, True), empty or text -> (None, False)."""
    if value is None or value == "":
        return None, False
    try:
        x = float(value)
    except ValueError:
        return None, False
    return (None if math.isnan(x) else x), True


def cdvae_record(row: dict[str, str], row_number: int, uri: str, split: str | None, id_column: str) -> RawRecord:
    """One CDVAE CSV row (same column handling as ``unimat_dist.datasets.iter_cdvae_csv``)."""
    row = dict(row)
    index = row.pop("", None)
    cif = row.pop("cif", None)
    if cif is None:
        raise ValueError(f"{uri}: not a CDVAE CSV (no 'cif' column)")
    rid = row.pop(id_column, None) or index or str(row_number)
    props: dict[str, float | None] = {}
    meta: dict[str, Any] = {} if index is None else {"index": index}
    for k, v in row.items():
        num, ok = _number(v)
        if ok and k not in _CDVAE_META_NUMERIC:
            props[k] = num
        elif ok:
            meta[k] = int(num) if num is not None and float(num).is_integer() else num
        else:
            meta[k] = v
    return RawRecord(id=str(rid), source=f"{uri}:row {row_number}", kind="cif", text=cif, properties=props,
                     metadata=meta, split=split)


def gnome_record(row: dict[str, str], row_number: int, unit: WorkUnit, archive: Archive) -> RawRecord:
    """One GNoME summary row joined with its CIF from ``by_id.zip``."""
    cols = {k.strip().lower(): v for k, v in row.items() if k is not None and k.strip() and not k.lower().startswith("unnamed")}
    mid = (cols.pop("materialid", None) or "").strip()
    source = f"{unit.uri}:row {row_number}"
    props: dict[str, float | None] = {}
    meta: dict[str, Any] = {}
    for k, v in cols.items():
        if k in GNOME_PROPERTIES:
            props[GNOME_PROPERTIES[k]] = _number(v)[0]
        else:
            meta[re.sub(r"[^a-z0-9]+", "_", k).strip("_")] = v
    if not mid:
        return RawRecord(id=f"row{row_number}", source=source, kind="rejected", properties=props, metadata=meta,
                         rejected=Rejected("parse_error", "summary row has no MaterialId"))
    for name in (f"by_id/{mid}.CIF", f"by_id/{mid}.cif", f"{mid}.CIF", f"{mid}.cif"):
        data = archive.read(name)
        if data is None:
            continue
        text = data.decode("utf-8", errors="replace")
        return RawRecord(id=mid, source=f"{unit.archive}:{name}", kind="cif", text=text, properties=props, metadata=meta)
    return RawRecord(id=mid, source=source, kind="rejected", properties=props, metadata=meta,
                     rejected=Rejected("missing_structure", f"no by_id/{mid}.CIF in {unit.archive}"))


def _file_kind(name: str) -> str | None:
    base = os.path.basename(name)
    low = base.lower()
    if low.endswith(".gz"):
        low = low[:-3]
        base = base[:-3]
    if low.endswith((".cif", ".mcif")):
        return "cif"
    if low.endswith((".vasp", ".poscar")) or base.upper().startswith(("POSCAR", "CONTCAR")):
        return "poscar"
    if low.endswith((".extxyz", ".xyz")):
        return "extxyz"
    if low.endswith(".traj"):
        return "traj"
    return None


def _read_file(unit: WorkUnit, name: str, storage_options: dict | None, scratch_dir: str | None) -> bytes:
    if unit.uri.lower().endswith(".zip"):
        data = _archive(unit.uri, _opts_key(storage_options), scratch_dir).read(name)
        if data is None:
            raise KeyError(f"no member {name!r}")
    else:
        with open_input(join_uri(unit.uri, name), "rb", storage_options) as fh:
            data = fh.read()
    return gzip.decompress(data) if name.lower().endswith(".gz") else data


_DATA_BLOCK = re.compile(r"(?im)^[ \t]*data_")


def file_records(unit: WorkUnit, name: str, storage_options: dict | None, scratch_dir: str | None = None) -> Iterator[RawRecord]:
    """Records of one structure file (several for multi-block CIFs and multi-frame files)."""
    from .structure_parse import atoms_arrays

    where = f"{unit.uri}:{name}"
    kind = _file_kind(name)
    if kind is None:
        yield RawRecord(id=name, source=where, kind="rejected",
                        rejected=Rejected("unsupported_file", f"{name}: not a CIF/POSCAR/extxyz/traj file"))
        return
    try:
        data = _read_file(unit, name, storage_options, scratch_dir)
    except (OSError, KeyError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        yield RawRecord(id=name, source=where, kind="rejected", rejected=Rejected("parse_error", f"cannot read {name}: {exc}"))
        return
    if kind in ("cif", "poscar"):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
        if kind == "cif":
            starts = [m.start() for m in _DATA_BLOCK.finditer(text)]
            blocks = [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])] or [text]
            for k, block in enumerate(blocks):
                rid = name if len(blocks) == 1 else f"{name}#{k}"
                yield RawRecord(id=rid, source=where, kind="cif", text=block)
        else:
            yield RawRecord(id=name, source=where, kind="poscar", text=text)
        return
    import ase.io

    fmt = "traj" if kind == "traj" else "extxyz"
    stream: Any = io.BytesIO(data) if fmt == "traj" else io.StringIO(data.decode("utf-8", errors="replace"))
    frames = ase.io.iread(stream, index=":", format=fmt)
    k = 0
    while True:
        rid = f"{name}#{k}"
        try:
            atoms = next(frames)
        except StopIteration:
            break
        except Exception as exc:  # ASE raises many types on malformed files; the rest of the file is lost
            yield RawRecord(id=rid, source=where, kind="rejected",
                            rejected=Rejected("parse_error", f"frame {k} and after unreadable: {exc}"))
            break
        props, meta = _atoms_info(atoms)
        try:
            arrays = atoms_arrays(atoms)
        except Rejected as rej:
            yield RawRecord(id=rid, source=where, kind="rejected", properties=props, metadata=meta, rejected=rej)
        else:
            yield RawRecord(id=rid, source=where, kind="arrays", arrays=arrays, properties=props, metadata=meta)
        k += 1


def _atoms_info(atoms) -> tuple[dict[str, float | None], dict[str, Any]]:
    props: dict[str, float | None] = {}
    meta: dict[str, Any] = {}
    for k, v in atoms.info.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            if isinstance(v, (str, bool)):
                meta[k] = v
            continue
        props[k] = None if math.isnan(float(v)) else float(v)
    calc = getattr(atoms, "calc", None)
    if calc is not None and "energy" in getattr(calc, "results", {}):
        props["energy"] = float(calc.results["energy"])
    return props, meta


def iter_unit_records(unit: WorkUnit, source, storage_options: dict | None, scratch_dir: str | None = None) -> Iterator[RawRecord]:
    """Stream the records of one work unit."""
    if unit.kind == "cdvae-rows":
        for n, row in _rows(unit, storage_options):
            yield cdvae_record(row, n, unit.uri, unit.split, source.id_column)
    elif unit.kind == "gnome-rows":
        archive = _archive(unit.archive, _opts_key(storage_options), scratch_dir)
        for n, row in _rows(unit, storage_options):
            yield gnome_record(row, n, unit, archive)
    elif unit.kind == "files":
        for name in unit.files:
            yield from file_records(unit, name, storage_options, scratch_dir)
    else:
        raise ValueError(f"unknown work unit kind {unit.kind!r}")
