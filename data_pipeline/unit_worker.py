"""One work unit, end to end: read -> parse -> validate -> encode -> write shards -> commit.

Pure Python (no Ray): the Ray executor and the local executor call ``process_unit`` alike, and give
byte-identical results. Commit order makes a unit all-or-nothing for the job:

1. each shard is built in a local scratch file and published under its final name when complete
   (``storage.put_file_atomic``); a crash leaves at most complete shards that no manifest lists yet;
2. the unit's quarantine lines (``quarantine/u<unit>.jsonl``), if any;
3. the unit record ``_units/u<unit>.json`` - the commit point. A resumed job skips exactly the units
   whose record exists and matches; the others are redone and rewrite the same bytes.
"""
from __future__ import annotations

import json
import math
import os
import resource
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from unimat_dist.shards.sample_format import json_bytes, pack_sample
from unimat_dist.storage import join_uri, put_file_atomic, write_bytes_atomic
from unimat_dist.shards.tar_shards import ShardWriter
from unimat_dist.representation import LatticeStats, UniMatSpec, encode_arrays

from .quarantine import Rejected, quarantine_entry
from .readers import WorkUnit, iter_unit_records
from .splits import formulas, split_of
from .structure_parse import record_arrays
from .validate import check_counts, validate_arrays

UNITS_DIR = "_units"
QUARANTINE_DIR = "quarantine"
_TAR_OVERHEAD = 2048  # bytes per sample beyond its payload: two 512-byte headers + padding


@dataclass(frozen=True)
class JobContext:
    """Everything a worker needs, as plain data (shipped to Ray tasks)."""

    fingerprint: str
    spec: dict[str, Any]
    split_mode: str  # "composition" | "source"
    fractions: dict[str, float]
    salt: str
    output_uri: str
    output_options: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)  # SourceConfig as a dict
    source_options: dict[str, Any] = field(default_factory=dict)
    cif_parser: str = "fast"
    min_distance: float = 0.5
    max_atoms: int | None = None
    max_record_bytes: int = 16 * 1024 * 1024
    lattice_length_range: tuple[float, float] = (1.0, 200.0)
    lattice_angle_range: tuple[float, float] = (1.0, 179.0)
    volume_per_atom_range: tuple[float, float] = (1.0, 500.0)
    max_shard_bytes: int = 256 * 1024 * 1024
    max_shard_samples: int | None = None
    scratch_dir: str | None = None


def unit_name(index: int) -> str:
    return f"u{index:06d}"


def unit_record_uri(output_uri: str, index: int) -> str:
    return join_uri(output_uri, UNITS_DIR, f"{unit_name(index)}.json")


class _SourceView:
    """Attribute access to the source dict (readers take ``source.id_column``)."""

    def __init__(self, d: dict[str, Any]) -> None:
        self.__dict__.update(d)


class _SplitAccumulator:
    """Per-split counts and the statistics the manifest needs (mergeable across units)."""

    def __init__(self, coords: str) -> None:
        self.samples = 0
        self.lattices: list[np.ndarray] = []
        self.properties: dict[str, list[float]] = {}  # name -> [count, sum, sum of squares]
        self.cartesian_scale = 0.0
        self.coords = coords

    def add(self, lattice: np.ndarray, props: dict[str, float | None]) -> None:
        self.samples += 1
        self.lattices.append(lattice)
        if self.coords == "cartesian":
            self.cartesian_scale = max(self.cartesian_scale, float(np.abs(lattice.reshape(3, 3)).sum(0).max()))
        for k, v in props.items():
            if v is not None:
                acc = self.properties.setdefault(k, [0, 0.0, 0.0])
                acc[0] += 1
                acc[1] += v
                acc[2] += v * v

    def to_dict(self) -> dict[str, Any]:
        stats = LatticeStats(self.coords)
        if self.lattices:
            stats.update(np.stack(self.lattices))
        return {
            "samples": self.samples,
            "lattice_stats": asdict(stats),
            "property_stats": {k: self.properties[k] for k in sorted(self.properties)},
            "cartesian_scale": self.cartesian_scale,
        }


def _clean_properties(props: dict[str, float | None]) -> dict[str, float | None]:
    return {k: (float(v) if v is not None and math.isfinite(v) else None) for k, v in sorted(props.items())}


def process_unit(unit: WorkUnit, ctx: JobContext) -> dict[str, Any]:
    """Run one unit and commit it; returns the unit record (also written to ``_units/``)."""
    t0, c0 = time.perf_counter(), time.process_time()
    spec = UniMatSpec.from_dict(ctx.spec)
    source = _SourceView(ctx.source)
    if ctx.scratch_dir:
        os.makedirs(ctx.scratch_dir, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=f"unimat-{unit_name(unit.index)}-", dir=ctx.scratch_dir)
    writers: dict[str, tuple[ShardWriter, int]] = {}
    parts: Counter[str] = Counter()
    shards: list[dict[str, Any]] = []
    # quarantine lines go to a scratch file as they come: a unit's record count is not bounded by
    # records_per_unit (a 16 MB CIF can hold 40,000 blocks), so they are never all held in memory
    qlocal = os.path.join(scratch, "quarantine.jsonl")
    qfile = None
    reasons: Counter[str] = Counter()
    parsers: Counter[str] = Counter()
    accs: dict[str, _SplitAccumulator] = {}
    names: set[str] = set()
    read = 0

    def check(z: np.ndarray) -> None:  # the O(N) limits, run by the parsers before anything O(N^2)
        check_counts(z, spec, ctx.max_atoms)

    def finish(split: str) -> None:
        writer, part = writers.pop(split)
        info = writer.close()
        rel = f"{split}/{unit_name(unit.index)}-{part}.tar"
        put_file_atomic(writer.path, join_uri(ctx.output_uri, rel), ctx.output_options)
        os.remove(writer.path)
        shards.append({"path": rel, "split": split, **info})

    def writer_for(split: str, nbytes: int) -> ShardWriter:
        if split in writers:
            w, _ = writers[split]
            full_n = ctx.max_shard_samples is not None and w.samples >= ctx.max_shard_samples
            full_b = w.samples > 0 and w.bytes_written + nbytes + _TAR_OVERHEAD + 1024 > ctx.max_shard_bytes
            if not (full_n or full_b):
                return w
            finish(split)
        part = parts[split]
        parts[split] += 1
        w = ShardWriter(os.path.join(scratch, f"{split}-{part}.tar"))
        writers[split] = (w, part)
        return w

    try:
        records = iter_unit_records(unit, source, ctx.source_options, ctx.scratch_dir, ctx.max_record_bytes)
        for seq, rec in enumerate(records):
            read += 1
            try:
                (z, frac, params), parser = record_arrays(rec, ctx.cif_parser, check)  # type: ignore[arg-type]
                validate_arrays(z, frac, params, spec, ctx.min_distance, ctx.max_atoms, tuple(ctx.lattice_length_range),
                                tuple(ctx.lattice_angle_range), tuple(ctx.volume_per_atom_range))
                try:
                    tensor = encode_arrays(z, frac, params, spec, record=rec.id)
                except ValueError as exc:
                    raise Rejected("encode_error", str(exc)) from None
            except Rejected as rej:
                reasons[rej.reason] += 1
                if qfile is None:
                    qfile = open(qlocal, "wb")
                qfile.write(json_bytes(quarantine_entry(rec.id, rec.source, rej, unit.index, rec.text)) + b"\n")
                continue
            parsers[parser] += 1
            formula, reduced = formulas(z)
            if ctx.split_mode == "source":
                split = rec.split or "train"
            else:
                split = split_of(reduced, ctx.fractions, ctx.salt)
            props = _clean_properties(rec.properties)
            names.update(props)
            meta = {
                "id": rec.id,
                "formula": formula,
                "reduced_formula": reduced,
                "num_atoms": int(z.size),
                "split": split,
                "source": rec.source,
                "properties": props,
                "metadata": rec.metadata,
            }
            members = pack_sample(tensor.positions, tensor.mask, tensor.lattice, meta)
            writer = writer_for(split, sum(len(v) for v in members.values()))
            writer.write(f"{unit_name(unit.index)}-{seq:07d}", members)
            accs.setdefault(split, _SplitAccumulator(spec.coords)).add(np.asarray(tensor.lattice, dtype=np.float64), props)
        for split in sorted(writers):
            finish(split)
        qpath = None
        if qfile is not None:
            qfile.close()
            qpath = f"{QUARANTINE_DIR}/{unit_name(unit.index)}.jsonl"
            put_file_atomic(qlocal, join_uri(ctx.output_uri, qpath), ctx.output_options)
    finally:
        if qfile is not None:
            qfile.close()
        shutil.rmtree(scratch, ignore_errors=True)
    record = {
        "unit": unit.index,
        "digest": unit.digest(),
        "fingerprint": ctx.fingerprint,
        "shards": sorted(shards, key=lambda s: s["path"]),
        "quarantine": qpath,
        "counts": {
            "read": read,
            "written": sum(a.samples for a in accs.values()),
            "quarantined": sum(reasons.values()),
            "quarantined_by_reason": dict(sorted(reasons.items())),
            "parsers": dict(sorted(parsers.items())),
        },
        "splits": {k: accs[k].to_dict() for k in sorted(accs)},
        "properties": sorted(names),
        "seconds": round(time.perf_counter() - t0, 3),
        "cpu_seconds": round(time.process_time() - c0, 3),  # excludes time lost to other processes
        "pid": os.getpid(),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # worker's peak so far
    }
    write_bytes_atomic(unit_record_uri(ctx.output_uri, unit.index), json.dumps(record, sort_keys=True).encode(), ctx.output_options)
    return record
