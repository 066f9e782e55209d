"""Analyse a whole structure set (in parallel) and cache the result on disk.

Reference sets are evaluated again and again against new samples, and CrystalNN fingerprints cost
0.1-0.5 s per structure, so the analysed reference set is pickled under
``$UNIMAT_CACHE/eval/features/<key>.pkl`` (default ``~/.cache/unimat/eval``). The key hashes the file's
sha256, the analysis options, the row limit and ``PROTOCOL_VERSION``; editing the file or any option
makes a new entry, so a stale cache cannot be read.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import time
from functools import partial
from pathlib import Path
from typing import Sequence

from .fingerprints import CrystalFeatures, analyse_record
from .parallel import parallel_map
from .structures_io import StructureRecord, file_checksum, load_structures

log = logging.getLogger(__name__)

PROTOCOL_VERSION = "cdvae-proxy-1"  # bump when analyse_record changes what it computes


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
    cache_file = cache_root() / "features" / f"{key}.pkl"
    info["cache_file"] = str(cache_file)
    if use_cache and cache_file.exists():
        try:
            with open(cache_file, "rb") as fh:
                feats = pickle.load(fh)
            info["cache_hit"] = True
            info["seconds"] = round(time.time() - t0, 2)
            log.info("%s: %d analysed crystals from cache %s", path, len(feats), cache_file)
            return feats, info
        except Exception as exc:  # a truncated/incompatible pickle is recomputed, never trusted
            log.warning("ignoring unreadable cache %s (%s)", cache_file, exc)
    recs = load_structures(path, limit=limit)
    feats = analyse_records(recs, niggli, fingerprints, oxidation_set, keep_structures, workers, progress, desc)
    if use_cache:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as fh:
            pickle.dump(feats, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, cache_file)  # atomic: a concurrent reader never sees half a file
    info["seconds"] = round(time.time() - t0, 2)
    return feats, info
