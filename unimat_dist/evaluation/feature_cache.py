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

Shipped layer (looked up first): the analysed bundled reference splits ship with the package as gzip
JSON under ``evaluation/data/reference_features/`` (``index.json`` lists each file with the sha256 of the
split it was computed from, compressed and decompressed, the analysis options and its own sha256). A
source whose sha256 matches an entry (the bundled ``test.csv.gz`` or the downloaded official
``test.csv``) with the default reference options (``niggli=True, fingerprints=True,
oxidation_set="smact14"``, no structures kept; ``limit`` takes the first N rows) is read from there
(unless ``UNIMAT_SHIPPED_FEATURES=0``) instead of being fingerprinted (about 0.3 s per crystal: 20 minutes for Perov-5 test on 2 cores); any
other file or option is computed as before. Rebuild the shipped files after a change to
``analyse_record`` (bump ``PROTOCOL_VERSION``) or to a bundled split with

    python -m unimat_dist.evaluation.feature_cache --build-bundled [--workers N]
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import logging
import os
import time
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np

from .fingerprints import CrystalFeatures, analyse_record
from unimat_dist.parallel import parallel_map
from .structures_io import StructureRecord, file_checksum, load_structures

log = logging.getLogger(__name__)

PROTOCOL_VERSION = "cdvae-proxy-1"  # bump when analyse_record changes what it computes
CACHE_FORMAT = "unimat-dist/features-v1"
SHIPPED_FORMAT = "unimat-dist/shipped-features-v1"
SHIPPED_DIR = Path(__file__).resolve().parent / "data" / "reference_features"
SHIPPED_ENV = "UNIMAT_SHIPPED_FEATURES"  # "0": never read the shipped layer (recompute with your libraries)
SHIPPED_OPTIONS = dict(niggli=True, fingerprints=True, oxidation_set="smact14")
# Records fingerprinted from scratch by analyse_set in this process (tests assert a shipped hit adds none).
COUNTERS = {"analysed_records": 0, "shipped_hits": 0}
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
    COUNTERS["analysed_records"] += len(records)
    return parallel_map(fn, records, workers=workers, desc=desc, progress=progress)


def _shipped_index(root: Path) -> list[dict]:
    try:
        data = json.loads((root / "index.json").read_text())
    except (OSError, ValueError):
        return []
    return data.get("entries", []) if isinstance(data, dict) and data.get("format") == SHIPPED_FORMAT else []


def shipped_features(sha256: str, niggli: bool, fingerprints: bool, oxidation_set: str, keep_structures: bool,
                     limit: int | None, root: Path | None = None) -> tuple[list[CrystalFeatures], str] | None:
    """(features, shipped file) for a source whose sha256 and options a shipped entry covers, else None."""
    if os.environ.get(SHIPPED_ENV, "1") == "0":
        return None
    if keep_structures or dict(niggli=niggli, fingerprints=fingerprints, oxidation_set=oxidation_set) != SHIPPED_OPTIONS:
        return None
    root = SHIPPED_DIR if root is None else root
    for entry in _shipped_index(root):
        if sha256 not in (entry.get("sha256"), entry.get("content_sha256")) or entry.get("protocol") != PROTOCOL_VERSION:
            continue
        f = root / entry["file"]
        try:
            raw = f.read_bytes()
            if hashlib.sha256(raw).hexdigest() != entry.get("file_sha256"):
                raise ValueError("sha256 differs from index.json")
            feats = features_from_json(json.loads(gzip.decompress(raw)), str(f))
        except Exception as exc:  # noqa: BLE001 - a damaged shipped file is recomputed, never trusted
            log.warning("%s: ignoring shipped reference features (%s); recomputing", f, exc)
            return None
        COUNTERS["shipped_hits"] += 1
        return (feats[:limit] if limit is not None else feats), str(f)
    return None


def build_bundled(out_dir: Path = SHIPPED_DIR, splits: Sequence[str] | None = None, workers: int | None = None,
                  progress: bool = True) -> list[dict]:
    """Analyse the bundled splits (``NAME:SPLIT``; default all) from scratch and write the shipped layer."""
    from unimat_dist.datasets.registry import DATASETS, bundled_path

    wanted = list(splits) if splits else [f"{n}:{s}" for n, i in DATASETS.items() for s in i.bundled_splits]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = {(e["dataset"], e["split"]): e for e in _shipped_index(out_dir)}
    for spec in wanted:
        name, split = spec.split(":", 1)
        path = bundled_path(name, split)
        if path is None:
            raise FileNotFoundError(f"{spec}: not a bundled split")
        feats, info = analyse_set(path, workers=workers, progress=progress, desc=spec, use_shipped=False,
                                  **SHIPPED_OPTIONS)
        payload = features_to_json(feats)
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0) as gz:
            gz.write(json.dumps(payload, default=_json_default, separators=(",", ":")).encode())
        fname = f"{name}-{split}.json.gz"
        (out_dir / fname).write_bytes(buf.getvalue())
        content = hashlib.sha256()
        with gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                content.update(block)
        entries[(name, split)] = {
            "dataset": name, "split": split, "file": fname, "n": len(feats), "source": path.name,
            "sha256": info["sha256"], "content_sha256": content.hexdigest(),
            "file_sha256": hashlib.sha256(buf.getvalue()).hexdigest(), "protocol": PROTOCOL_VERSION,
            "options": SHIPPED_OPTIONS, "versions": _library_versions(),
        }
        log.info("%s: %d crystals -> %s (%.2f MB)", spec, len(feats), out_dir / fname, len(buf.getvalue()) / 1e6)
    index = {"format": SHIPPED_FORMAT, "entries": sorted(entries.values(), key=lambda e: (e["dataset"], e["split"]))}
    (out_dir / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return index["entries"]


def _library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("pymatgen", "matminer", "smact", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:  # pragma: no cover
            out[pkg] = None
    return out


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
    use_shipped: bool = True,
) -> tuple[list[CrystalFeatures], dict]:
    """Analysed crystals of ``source`` (a path or records) and provenance
    ``{"path", "sha256", "cache_hit", "shipped", "cache_file", "seconds"}``. Only paths are cached; the
    shipped layer (bundled reference splits) is read first when ``use_cache`` and ``use_shipped``."""
    t0 = time.time()
    info: dict = {"path": None, "sha256": None, "cache_hit": False, "shipped": False, "cache_file": None}
    if not isinstance(source, (str, Path)):
        recs = list(source)[: limit if limit is not None else None]
        feats = analyse_records(recs, niggli, fingerprints, oxidation_set, keep_structures, workers, progress, desc)
        info["seconds"] = round(time.time() - t0, 2)
        return feats, info
    path = Path(source)
    info["path"] = str(path)
    info["sha256"] = file_checksum(path)
    if use_cache and use_shipped:
        hit = shipped_features(info["sha256"], niggli, fingerprints, oxidation_set, keep_structures, limit)
        if hit is not None:
            feats, info["cache_file"] = hit
            info["cache_hit"] = info["shipped"] = True
            info["seconds"] = round(time.time() - t0, 2)
            log.info("%s: %d analysed crystals shipped with unimat-dist (%s)", path, len(feats), info["cache_file"])
            return feats, info
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


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m unimat_dist.evaluation.feature_cache",
                                 description="Build the shipped analysed reference splits (package data).")
    ap.add_argument("--build-bundled", action="store_true", required=True)
    ap.add_argument("--split", action="append", help="NAME:SPLIT (repeatable; default: every bundled split)")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--out", type=Path, default=SHIPPED_DIR)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for e in build_bundled(args.out, args.split, args.workers):
        print(f"{e['dataset']}:{e['split']}: {e['n']} crystals, {e['file']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
