"""Source formats -> deterministic work units -> streams of ``RawRecord``.

Planning (driver, cheap) cuts a source into ``WorkUnit``s of at most ``records_per_unit`` records;
reading (worker) streams one unit's records, so no process ever holds more than one record's text.

* ``cdvae-csv``: CDVAE benchmark CSVs (one multi-line CIF per row). A unit is a byte range of rows
  found by ``csv_index`` (one pass over the file); units never span files. ``source.dataset`` names a
  registry data set (each bundled/downloaded split file becomes its own split), ``source.uri`` a CSV or
  a folder holding ``{train,val,test}.csv[.gz]``.
* ``gnome``: the GNoME release layout (``data/GNOME_FORMAT.md``): ``stable_materials_summary.csv``
  (one row per material, no coordinates) + ``by_id.zip`` holding ``by_id/<MaterialId>.CIF``. A unit is
  a byte range of summary rows; each node indexes the zip once into scratch (``zip_disk_index``: 32
  bytes per member on disk, none in worker memory; remote archives staged to node-local scratch) and
  workers read the members they need. Columns are matched
  case-insensitively.
* ``structure-dir``: a folder or ``.zip`` of CIF / POSCAR / extxyz / ASE ``.traj`` files (``.gz``
  allowed); a unit is a run of files in sorted order; multi-block CIFs and multi-frame files yield one
  record per block/frame (id ``path#k``). Hidden files and ``__MACOSX`` are ignored; anything else
  unrecognised is quarantined as ``unsupported_file``.

Untrusted input: every read is capped at ``validate.max_record_bytes`` decompressed and
streamed (a CSV row, a file, a zip member, a .gz), so memory never depends on what a file claims; a
bad row or member is one quarantined record, never a failed job; symlinks that leave a local source
folder are not followed (``source.follow_links``) and are counted; zip member names with ``..`` or an
absolute path are quarantined as ``unsafe_path``; a record id seen earlier in the source (ids are
checked at planning, across all files) is quarantined as ``duplicate_id`` - the first one is kept.
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import json
import math
import os
import re
import sys
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, Iterator

import numpy as np

from unimat_dist.storage import filesystem, is_local, join_uri, open_input, split_uri

from .csv_index import OverLong, RangeReader, index_csv, iter_row_bytes, skip_to
from .quarantine import Rejected
from .records import RawRecord
from .zip_disk_index import node_index
from .zip_index import TooLarge, local_copy

csv.field_size_limit(sys.maxsize)

FORMATS = ("cdvae-csv", "gnome", "structure-dir")
DEFAULT_MAX_RECORD_BYTES = 16 * 1024 * 1024  # ValidateConfig.max_record_bytes
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
    # records to quarantine as duplicate_id: (data-row number | position in ``files``, where the id came first)
    duplicates: tuple[tuple[int, str], ...] = ()
    follow_links: bool = False  # structure-dir: read through links that leave ``uri`` (source.follow_links)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["files"] = list(self.files)
        d["duplicates"] = [list(x) for x in self.duplicates]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "WorkUnit":
        dups = tuple((int(k), str(w)) for k, w in d.get("duplicates", ()))
        return cls(**{**d, "files": tuple(d.get("files", ())), "duplicates": dups})

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


# hidden files/folders and macOS resource forks; "." and ".." are not hidden names but unsafe ones
_IGNORED = re.compile(r"(^|/)(\.(?!\.?(/|$))[^/]*|__MACOSX)(/|$)")


def unsafe_member_name(name: str) -> bool:
    """A path that would leave the archive's root if extracted (``..``, absolute, a drive or backslash)."""
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or ".." in parts or "\\" in name or bool(re.match(r"^[A-Za-z]:", name)) \
        or "\x00" in name


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _walk_local(root: str, follow_links: bool) -> tuple[list[str], int]:
    """(relative file paths, links skipped) of a local folder, never leaving it through a symlink unless
    ``follow_links``. A link whose target is inside the folder is read as a file; a link to a folder
    inside it is not descended (its files are listed by their real path already), nor is a cycle."""
    real_root = os.path.realpath(root)
    names: list[str] = []
    skipped = 0
    seen = {real_root}
    stack = [(root, "")]
    while stack:
        path, rel = stack.pop()
        with os.scandir(path) as it:
            for e in it:
                r = rel + e.name
                if e.is_symlink():
                    target = os.path.realpath(e.path)
                    inside = _inside(target, real_root)
                    if os.path.isdir(target):
                        if inside or not follow_links or target in seen:
                            skipped += 1
                            continue
                        seen.add(target)
                        stack.append((e.path, r + "/"))
                    elif os.path.isfile(target) and (inside or follow_links):
                        names.append(r)
                    else:  # leaves the folder (or dangles)
                        skipped += 1
                elif e.is_dir(follow_symlinks=False):
                    stack.append((e.path, r + "/"))
                elif e.is_file(follow_symlinks=False):
                    names.append(r)
    return names, skipped


def list_structure_files(uri: str, storage_options: dict | None, follow_links: bool = False) -> tuple[list[str], dict[str, int]]:
    """Sorted relative paths of the files in a folder or zip (hidden files and __MACOSX skipped), and
    counts of what was left out: {"hidden": n, "links_skipped": n}."""
    skipped = 0
    if uri.lower().endswith(".zip"):
        names = [i.filename for i in _open_zip(uri, _opts_key(storage_options)).infolist() if not i.is_dir()]
    else:
        fs, path = filesystem(uri, storage_options)
        if not fs.isdir(path):
            raise FileNotFoundError(f"{uri}: not a folder or .zip of structure files")
        if is_local(uri):
            names, skipped = _walk_local(path, follow_links)
        else:  # object stores have no links
            base = path.rstrip("/") + "/"
            names = [p[len(base):] if p.startswith(base) else p for p in fs.find(path)]
    kept = sorted(n for n in names if not _IGNORED.search(n))
    return kept, {"hidden": len(names) - len(kept), "links_skipped": skipped}


def _id_key(rid: str) -> int:
    # 8 bytes per id keeps the planner's memory at ~20 MB for GNoME's 2.2M rows; a 64-bit collision
    # among 2.2M ids has probability ~1e-7
    return int.from_bytes(hashlib.blake2b(rid.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def _mark_duplicates(units: list[WorkUnit], ids: Iterator[tuple[int, int, str]], where) -> tuple[list[WorkUnit], int]:
    """Units with ``duplicates`` set from ``ids`` = (unit position, record key, id) in source order:
    every occurrence of an id after its first is listed, with the first's location (``where``)."""
    import array

    keys, upos, rkey = array.array("Q"), array.array("l"), array.array("q")
    for pos, k, rid in ids:
        keys.append(_id_key(rid))
        upos.append(pos)
        rkey.append(k)
    if not keys:
        return units, 0
    karr = np.frombuffer(keys, dtype=np.uint64)
    order = np.argsort(karr, kind="stable")  # stable: within an id, source order
    sk = karr[order]
    later = np.flatnonzero(sk[1:] == sk[:-1]) + 1
    found: dict[int, list[tuple[int, str]]] = {}
    for i in later.tolist():
        first = int(order[int(np.searchsorted(sk, sk[i], "left"))])
        seq = int(order[i])
        found.setdefault(upos[seq], []).append((rkey[seq], where(upos[first], rkey[first])))
    out = [dataclasses.replace(u, duplicates=tuple(sorted(found[p]))) if p in found else u for p, u in enumerate(units)]
    return out, int(later.size)


def _csv_ids(units: list[WorkUnit], id_of, storage_options: dict | None, max_bytes: int) -> Iterator[tuple[int, int, str]]:
    for pos, u in enumerate(units):
        for n, row in _rows(u, storage_options, max_bytes):
            rid = id_of(row) if isinstance(row, dict) else None
            if rid:
                yield pos, n, rid


def plan_source(source, records_per_unit: int, storage_options: dict | None,
                max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> SourcePlan:
    """Cut a source (``IngestConfig.source``) into work units; deterministic for unchanged input.

    Record ids are checked here, over the whole source, so that a repeated id is quarantined wherever
    the units run (one more streamed pass over the CSVs on the driver)."""
    if source.format == "cdvae-csv":
        files, notes = cdvae_files(source.uri, source.dataset, storage_options)
        units: list[WorkUnit] = []
        described = []
        for split, uri in files:
            new, rows = _csv_units(uri, "cdvae-rows", split, records_per_unit, source.limit, storage_options, len(units))
            units += new
            described.append({"uri": uri, "split": split, "rows": rows})
        id_column = source.id_column
        units, dups = _mark_duplicates(
            units, _csv_ids(units, lambda row: (row.get(id_column) or "").strip(), storage_options, max_record_bytes),
            lambda p, n: f"{units[p].uri}:row {n}")
        desc = {"format": source.format, "uri": source.uri, "dataset": source.dataset, "files": described, "notes": notes,
                "duplicate_ids": dups}
        return SourcePlan(units, desc)
    if source.format == "gnome":
        if not source.uri:
            raise ValueError("source: gnome needs source.uri (the release folder)")
        summary, archive = gnome_files(source.uri, storage_options)
        units, rows = _csv_units(summary, "gnome-rows", None, records_per_unit, source.limit, storage_options, 0, archive)
        units, dups = _mark_duplicates(
            units, _csv_ids(units, lambda row: _gnome_id(row), storage_options, max_record_bytes),
            lambda p, n: f"{units[p].uri}:row {n}")
        desc = {"format": source.format, "uri": source.uri, "files": [{"uri": summary, "rows": rows}, {"uri": archive}],
                "notes": ["GNoME data: CC BY-NC 4.0 (non-commercial); cite Merchant et al., Nature 624, 80-85 (2023)"],
                "duplicate_ids": dups}
        return SourcePlan(units, desc)
    if source.format == "structure-dir":
        if not source.uri:
            raise ValueError("source: structure-dir needs source.uri (a folder or .zip)")
        follow = bool(getattr(source, "follow_links", False))
        names, left_out = list_structure_files(source.uri, storage_options, follow)
        if source.limit is not None:
            names = names[: source.limit]
        if not names:
            raise FileNotFoundError(f"{source.uri}: no structure files")
        units = [
            WorkUnit(index=k, kind="files", uri=source.uri, files=tuple(names[i : i + records_per_unit]), follow_links=follow)
            for k, i in enumerate(range(0, len(names), records_per_unit))
        ]
        # a zip may hold two members of one name (a folder cannot): the first is read, the others flagged
        units, dups = _mark_duplicates(
            units, ((i // records_per_unit, i % records_per_unit, n) for i, n in enumerate(names)),
            lambda p, k: f"{source.uri}:{units[p].files[k]}")
        desc = {"format": source.format, "uri": source.uri, "files": [{"uri": source.uri, "count": len(names)}], "notes": [],
                "duplicate_ids": dups, "links_skipped": left_out["links_skipped"], "hidden_skipped": left_out["hidden"]}
        return SourcePlan(units, desc)
    raise ValueError(f"source.format must be one of {list(FORMATS)}, got {source.format!r}")


# ----------------------------------------------------------------------------------------------- reading
def _opts_key(storage_options: dict | None) -> str:
    return json.dumps(storage_options or {}, sort_keys=True)


def _open_zip(uri: str, opts_key: str) -> zipfile.ZipFile:
    """For listing members on the driver (workers use ``_archive``)."""
    return zipfile.ZipFile(open_input(uri, "rb", json.loads(opts_key)))


class Archive:
    """An open zip (node-local copy) and the node's on-disk index of its members, kept per worker process
    (``zip_disk_index``: built once per node, read with ``pread``; worker memory does not grow with it)."""

    def __init__(self, uri: str, storage_options: dict | None, scratch_dir: str | None) -> None:
        self.uri = uri
        path = local_copy(uri, storage_options, scratch_dir)
        self.fh = open(path, "rb")
        self.index = node_index(path, self.fh, scratch_dir)

    def read(self, name: str, max_bytes: int | None = None) -> bytes | None:
        return self.index.read(self.fh, name, max_bytes)


@lru_cache(maxsize=2)
def _archive(uri: str, opts_key: str, scratch_dir: str | None) -> Archive:
    """Opened once per worker; the node's index of a 2.2M-member archive is built once (~10 s, 71 MB on
    local disk) by the first worker that needs it."""
    return Archive(uri, json.loads(opts_key), scratch_dir)


def _split_row(raw: bytes | OverLong, fieldnames: list[str], max_bytes: int) -> dict[str, str] | Rejected:
    """One CSV row's fields by header name, or why the row is unusable (it is one record, not the job)."""
    if isinstance(raw, OverLong):
        return Rejected("too_large", f"row of {int(raw):,} bytes > validate.max_record_bytes={max_bytes:,}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejected("parse_error", f"row is not valid UTF-8 (byte {exc.start} of the row)")
    try:
        fields = next(csv.reader([text]), [])
    except csv.Error as exc:
        return Rejected("parse_error", f"malformed CSV row ({exc})")
    if len(fields) != len(fieldnames):
        return Rejected("parse_error", f"row has {len(fields)} fields, the header {len(fieldnames)}")
    return dict(zip(fieldnames, fields))


def _rows(unit: WorkUnit, storage_options: dict | None,
          max_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Iterator[tuple[int, dict[str, str] | Rejected]]:
    """(data-row number, row dict or ``Rejected``) of a CSV unit, streamed from its byte range; rows are
    cut by the same rule as the planner's index, so numbering never drifts past a bad row."""
    fieldnames = next(csv.reader([unit.header]))
    with open_input(unit.uri, "rb", storage_options, compression="infer") as fh:
        skip_to(fh, unit.start)
        for i, raw in enumerate(iter_row_bytes(fh, unit.stop - unit.start, max_bytes)):
            yield unit.first_row + i, _split_row(raw, fieldnames, max_bytes)


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


def _gnome_id(row: dict[str, str]) -> str:
    return next((v for k, v in row.items() if k.strip().lower() == "materialid"), "").strip()


def gnome_record(row: dict[str, str], row_number: int, unit: WorkUnit, archive: Archive,
                 max_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> RawRecord:
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
        try:
            data = archive.read(name, max_bytes)
        except TooLarge as exc:
            return RawRecord(id=mid, source=f"{unit.archive}:{name}", kind="rejected", properties=props, metadata=meta,
                             rejected=Rejected("too_large", f"{exc} (validate.max_record_bytes)"))
        except (ValueError, OSError, zlib.error) as exc:  # a corrupt member is one bad record
            return RawRecord(id=mid, source=f"{unit.archive}:{name}", kind="rejected", properties=props, metadata=meta,
                             rejected=Rejected("parse_error", str(exc)))
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


def _too_large(name: str, cap: int) -> Rejected:
    return Rejected("too_large", f"{name}: more than validate.max_record_bytes={cap:,} bytes (decompressed)")


def _read_capped(fh, cap: int, name: str) -> bytes:
    """At most ``cap`` bytes of a stream (compressed or not), or ``Rejected(too_large)``. Read in 1 MB
    chunks, so a rejected stream never costs more than the cap plus one chunk (one ``read(cap + 1)``
    of a decompressing stream can hold twice that)."""
    parts: list[bytes] = []
    total = 0
    while total <= cap:
        chunk = fh.read(min(1 << 20, cap + 1 - total))
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        total += len(chunk)
    raise _too_large(name, cap)


def cap_on_disk(max_bytes: int, name: str) -> int:
    """The largest stored size that can hold at most ``max_bytes``: gzip adds a header and, on data it
    cannot compress, ~0.03 % plus 5 bytes per 16 kB block."""
    return max_bytes + max_bytes // 1000 + 1024 if name.lower().endswith(".gz") else max_bytes


def _read_file(unit: WorkUnit, name: str, storage_options: dict | None, scratch_dir: str | None,
               max_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> bytes:
    if unit.uri.lower().endswith(".zip"):
        try:
            data = _archive(unit.uri, _opts_key(storage_options), scratch_dir).read(name, max_bytes)
        except TooLarge as exc:
            raise Rejected("too_large", f"{exc} (validate.max_record_bytes)") from None
        if data is None:
            raise KeyError(f"no member {name!r}")
        if name.lower().endswith(".gz"):
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
                return _read_capped(gz, max_bytes, name)
        return data
    uri = join_uri(unit.uri, name)
    if is_local(uri) and not unit.follow_links:
        # planning skipped links out of the folder; a file swapped for one since is refused here too
        root = os.path.realpath(split_uri(unit.uri)[1])
        if not _inside(os.path.realpath(split_uri(uri)[1]), root):
            raise Rejected("unsafe_path", f"{name} resolves outside the source folder (source.follow_links is false)")
    fs, path = filesystem(uri, storage_options)
    size = fs.size(path)  # cheap (stat / HEAD): a file over the cap is refused before a byte is read
    if size is not None and size > cap_on_disk(max_bytes, name):
        raise _too_large(name, max_bytes)
    with open_input(uri, "rb", storage_options) as fh:
        if name.lower().endswith(".gz"):
            with gzip.GzipFile(fileobj=fh) as gz:
                return _read_capped(gz, max_bytes, name)
        return _read_capped(fh, max_bytes, name)


_DATA_BLOCK = re.compile(r"(?im)^[ \t]*data_")


def file_records(unit: WorkUnit, name: str, storage_options: dict | None, scratch_dir: str | None = None,
                 max_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Iterator[RawRecord]:
    """Records of one structure file (several for multi-block CIFs and multi-frame files)."""
    from .structure_parse import atoms_arrays

    where = f"{unit.uri}:{name}"
    kind = _file_kind(name)
    if unsafe_member_name(name):  # reported, never opened: no name from an archive is a path to follow
        yield RawRecord(id=name, source=where, kind="rejected",
                        rejected=Rejected("unsafe_path", f"{name!r}: member name leaves the archive root"))
        return
    if kind is None:
        yield RawRecord(id=name, source=where, kind="rejected",
                        rejected=Rejected("unsupported_file", f"{name}: not a CIF/POSCAR/extxyz/traj file"))
        return
    try:
        data = _read_file(unit, name, storage_options, scratch_dir, max_bytes)
    except Rejected as rej:
        yield RawRecord(id=name, source=where, kind="rejected", rejected=rej)
        return
    except (OSError, KeyError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as exc:
        yield RawRecord(id=name, source=where, kind="rejected", rejected=Rejected("parse_error", f"cannot read {name}: {exc}"))
        return
    if kind in ("cif", "poscar"):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
        if kind == "cif":
            starts = [m.start() for m in _DATA_BLOCK.finditer(text)]
            spans = list(zip(starts, starts[1:] + [len(text)])) or [(0, len(text))]
            for k, (a, b) in enumerate(spans):  # one block's text at a time, not a list of all of them
                rid = name if len(spans) == 1 else f"{name}#{k}"
                yield RawRecord(id=rid, source=where, kind="cif", text=text[a:b])
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


def _duplicate(rid: str, source: str, first: str) -> RawRecord:
    return RawRecord(id=rid, source=source, kind="rejected",
                     rejected=Rejected("duplicate_id", f"id {rid!r} first appears at {first}; that record is kept"))


def iter_unit_records(unit: WorkUnit, source, storage_options: dict | None, scratch_dir: str | None = None,
                      max_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Iterator[RawRecord]:
    """Stream the records of one work unit: every record read comes out, good or ``kind="rejected"``."""
    dups = dict(unit.duplicates)
    if unit.kind in ("cdvae-rows", "gnome-rows"):
        archive = _archive(unit.archive, _opts_key(storage_options), scratch_dir) if unit.kind == "gnome-rows" else None
        for n, row in _rows(unit, storage_options, max_bytes):
            where = f"{unit.uri}:row {n}"
            if isinstance(row, Rejected):
                yield RawRecord(id=f"row{n}", source=where, kind="rejected", split=unit.split, rejected=row)
            elif n in dups:
                rid = (row.get(source.id_column) or "").strip() if archive is None else _gnome_id(row)
                yield _duplicate(rid, where, dups[n])
            elif archive is None:
                yield cdvae_record(row, n, unit.uri, unit.split, source.id_column)
            else:
                yield gnome_record(row, n, unit, archive, max_bytes)
    elif unit.kind == "files":
        for k, name in enumerate(unit.files):
            if k in dups:
                yield _duplicate(name, f"{unit.uri}:{name}", dups[k])
            else:
                yield from file_records(unit, name, storage_options, scratch_dir, max_bytes)
    else:
        raise ValueError(f"unknown work unit kind {unit.kind!r}")
