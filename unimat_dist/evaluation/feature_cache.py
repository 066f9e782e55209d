"""Analyse a whole structure set (in parallel) and cache the result on disk.

Reference sets are evaluated again and again against new samples, and CrystalNN fingerprints cost
0.1-0.5 s per structure, so the analysed reference set is stored as JSON under
``$UNIMAT_CACHE/eval/features/<key>.json`` (default ``~/.cache/unimat/eval``). The key hashes the file's
sha256, the analysis options, the row limit and ``PROTOCOL_VERSION``; editing the file or any option
makes a new entry, so a stale cache cannot be read.

JSON, not pickle: the cache folder may be shared, and unpickling a file lets whoever wrote it run code.
Fingerprints are stored as float lists (JSON floats round-trip exactly), structures as pymatgen's
``as_dict``. Pickle caches of earlier versions (``<key>.pkl``) are never opened: they are reported and
recomputed. An unreadable or malformed cache entry is reported and recomputed too.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np

from .fingerprints import CrystalFeatures, analyse_record
from .parallel import parallel_map
from .structures_io import StructureRecord, file_checksum, load_structures

log = logging.getLogger(__name__)

PROTOCOL_VERSION = "cdvae-proxy-1"  # bump when analyse_record changes what it computes
CACHE_FORMAT = "unimat-dist/features-v1"
_FIELDS = {f.name for f in dataclasses.fields(CrystalFeatures)}


def _json_default(v):
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"{type(v).__name__} is not JSON-serialisable")


def dump_json(data, path: Path) -> None:
    """Write JSON atomically (a temporary sibling, then rename: a concurrent reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, default=_json_default))
    os.replace(tmp, path)


def refuse_pickle(path: Path) -> None:
    """Report a pickle cache of an earlier version that sits where this entry would be; never unpickle it."""
    if path.exists():
        log.warning("%s: not loading this pickle cache (unpickling runs code from whoever wrote the file); "
                    "recomputing into a JSON cache. Delete the file to silence this warning.", path)


def features_to_json(feats: Sequence[CrystalFeatures]) -> dict:
    rows = []
    for f in feats:
        row = {name: getattr(f, name) for name in _FIELDS}
        for name in ("struct_fp", "comp_fp"):
            if row[name] is not None:
                row[name] = np.asarray(row[name], dtype=float).tolist()
        if row["structure"] is not None:
            row["structure"] = row["structure"].as_dict()
        rows.append(row)
    return {"format": CACHE_FORMAT, "features": rows}


def features_from_json(data, where: str) -> list[CrystalFeatures]:
    """Inverse of ``features_to_json``; ``ValueError`` naming ``where`` for anything else."""
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("features"), list):
        raise ValueError(f"{where}: not a {CACHE_FORMAT} cache")
    from pymatgen.core import Structure

    out = []
    for row in data["features"]:
        if not isinstance(row, dict) or set(row) != _FIELDS:
            raise ValueError(f"{where}: malformed entry")
        row = dict(row)
        for name in ("struct_fp", "comp_fp"):
            if row[name] is not None:
                row[name] = np.asarray(row[name], dtype=float)
        if row["structure"] is not None:
            row["structure"] = Structure.from_dict(row["structure"])
        out.append(CrystalFeatures(**row))
    return out


def cache_root() -> Path:
    return Path(os.environ.get("UNIMAT_CACHE", Path.home() / ".cache" / "unimat")) / "eval"


def analyse_records(
    records: Sequence[StructureRecord],
    niggli: bool,
    fingerprints: bool = True,
    oxidation_set: str = "smact14",
    keep_structures: bool = False,
    workers: int | None = None,
    progress: bool = True,
    desc: str = "analyse",
) -> list[CrystalFeatures]:
    fn = partial(analyse_record, niggli=niggli, fingerprints=fingerprints, oxidation_set=oxidation_set,
                 keep_structure=keep_structures)
    return parallel_map(fn, records, workers=workers, desc=desc, progress=progress)


def analyse_set(
    source: str | Path | Sequence[StructureRecord],
    niggli: bool,
    fingerprints: bool = True,
    oxidation_set: str = "smact14",
    keep_structures: bool = False,
    limit: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    use_cache: bool = True,
    desc: str = "analyse",
) -> tuple[list[CrystalFeatures], dict]:
    """Analysed crystals of ``source`` (a path or records) and provenance
    ``{"path", "sha256", "cache_hit", "cache_file", "seconds"}``. Only paths are cached."""
    t0 = time.time()
    info: dict = {"path": None, "sha256": None, "cache_hit": False, "cache_file": None}
    if not isinstance(source, (str, Path)):
        recs = list(source)[: limit if limit is not None else None]
        feats = analyse_records(recs, niggli, fingerprints, oxidation_set, keep_structures, workers, progress, desc)
        info["seconds"] = round(time.time() - t0, 2)
        return feats, info
    path = Path(source)
    info["path"] = str(path)
    info["sha256"] = file_checksum(path)
    options = dict(niggli=niggli, fingerprints=fingerprints, oxidation_set=oxidation_set,
                   keep_structures=keep_structures, limit=limit, protocol=PROTOCOL_VERSION)
    key = hashlib.sha256((info["sha256"] + json.dumps(options, sort_keys=True)).encode()).hexdigest()[:32]
    cache_file = cache_root() / "features" / f"{key}.json"
    info["cache_file"] = str(cache_file)
    if use_cache:
        refuse_pickle(cache_file.with_suffix(".pkl"))
    if use_cache and cache_file.exists():
        try:
            feats = features_from_json(json.loads(cache_file.read_text()), str(cache_file))
            info["cache_hit"] = True
            info["seconds"] = round(time.time() - t0, 2)
            log.info("%s: %d analysed crystals from cache %s", path, len(feats), cache_file)
            return feats, info
        except Exception as exc:  # a truncated/foreign/incompatible entry is recomputed, never trusted
            log.warning("%s: ignoring unreadable cache entry (%s); recomputing", cache_file, exc)
    recs = load_structures(path, limit=limit)
    feats = analyse_records(recs, niggli, fingerprints, oxidation_set, keep_structures, workers, progress, desc)
    if use_cache:
        try:
            dump_json(features_to_json(feats), cache_file)
        except (TypeError, ValueError) as exc:  # e.g. metadata a JSON file cannot hold: run uncached
            log.warning("%s: not cached (%s)", cache_file, exc)
    info["seconds"] = round(time.time() - t0, 2)
    return feats, info
