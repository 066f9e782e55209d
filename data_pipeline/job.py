"""The ingest job: plan -> resume check -> run pending units (Ray or local) -> manifest -> summary.

    from data_pipeline.job import run_ingest
    summary = run_ingest(cfg)            # cfg: data_pipeline.config.IngestConfig

Output layout (``output.uri``):

    manifest.json              written last; lists only committed shards (see unimat_dist.shards.manifest)
    train/u000000-0.tar ...    WebDataset shards, one or more per split per work unit
    quarantine/u000003.jsonl   rejected records with reasons (only units that rejected something)
    _units/u000000.json        per-unit commit records (resume state, statistics)
    _job.json                  fingerprint of the job that owns this output

Re-running the same job on the same output resumes: committed units are skipped, the others are
redone (their shards are byte-identical), and the manifest is rebuilt from all unit records. A job
with a different fingerprint (other source, spec, split policy, shard sizes, ...) is refused unless
``output.overwrite`` is set, which deletes only the files an ingest job writes (``LAYOUT``); a non-empty
folder that no ingest job owns is refused (``output.allow_nonempty`` to write next to other files), and so
is an output overlapping the source (rules: ``unimat_dist.output_guard``).

Every record read is written or quarantined with a reason: ``counts.read == counts.written +
counts.quarantined`` in the manifest, checked before it is written.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from unimat_dist.config import to_dict
from unimat_dist.shards.manifest import FORMAT, MANIFEST_NAME, SCHEMA_VERSION, SPLITS
from unimat_dist.shards.sample_format import ARRAY_NAMES, META_MEMBER, ARRAYS_MEMBER
from unimat_dist.output_guard import OutputLayout, UnitJob, claim_output
from unimat_dist.representation import LatticeStats, Normalizer, UniMatSpec

from .config import IngestConfig
from .metrics import IngestMetrics
from .readers import SourcePlan, WorkUnit, plan_source
from .splits import check_fractions
from .unit_worker import QUARANTINE_DIR, UNITS_DIR, JobContext, process_unit, unit_name

log = logging.getLogger("unimat.ingest")

PIPELINE_VERSION = 1  # bump when the bytes of a sample change for the same input
JOB_FILE = "_job.json"


@dataclass
class IngestSummary:
    output_uri: str
    manifest_uri: str
    units: int
    units_skipped: int  # already committed by an earlier (interrupted) run
    read: int
    written: int
    quarantined: int
    quarantined_by_reason: dict[str, int]
    split_samples: dict[str, int]
    shards: int
    bytes: int
    seconds: float
    parsers: dict[str, int] = field(default_factory=dict)
    not_read: dict[str, int] = field(default_factory=dict)  # links_skipped, hidden_skipped: files never opened

    def lines(self) -> list[str]:
        rate = self.read / self.seconds if self.seconds > 0 else float("nan")
        out = [
            f"ingest summary for {self.output_uri}",
            f"  read        {self.read:>10,}   ({rate:,.0f} records/s over {self.seconds:.1f} s; "
            f"{self.units} units, {self.units_skipped} already done)",
            f"  written     {self.written:>10,}   in {self.shards} shards, {self.bytes / 1e6:,.1f} MB: "
            + ", ".join(f"{k} {v:,}" for k, v in self.split_samples.items()),
            f"  quarantined {self.quarantined:>10,}",
        ]
        out += [f"    {reason:<28} {n:>8,}" for reason, n in self.quarantined_by_reason.items()]
        out.append(f"  check       read {self.read:,} = written {self.written:,} + quarantined {self.quarantined:,}")
        if self.not_read.get("links_skipped"):
            out.append(f"  skipped     {self.not_read['links_skipped']:>10,}   symlinks leaving the source folder (not "
                       "followed; source.follow_links)")
        if self.not_read.get("hidden_skipped"):
            out.append(f"  skipped     {self.not_read['hidden_skipped']:>10,}   hidden files / __MACOSX (not read)")
        out.append(f"  parsers     " + ", ".join(f"{k} {v:,}" for k, v in self.parsers.items()))
        out.append(f"  manifest    {self.manifest_uri}")
        return out


# ----------------------------------------------------------------------------------------- resolution
def resolve_spec(cfg: IngestConfig) -> UniMatSpec:
    """The spec from config, with the registry's L/elements for a named CDVAE data set as defaults."""
    from unimat_dist.datasets import spec_for_dataset

    return spec_for_dataset(cfg.source.dataset, max_atoms_per_element=cfg.spec.max_atoms_per_element,
                            elements=cfg.spec.elements, coords=cfg.spec.coords)


def resolve_split_mode(cfg: IngestConfig, plan: SourcePlan) -> str:
    mode = cfg.split.mode
    fixed = [u.split is not None for u in plan.units]
    if mode == "auto":
        mode = "source" if cfg.source.format == "cdvae-csv" and fixed and all(fixed) else "composition"
    if mode == "source" and not all(fixed):
        raise ValueError(
            "split.mode=source needs a split per source file (CDVAE train/val/test files); "
            "use split.mode=composition for this source"
        )
    return mode


def fingerprint(cfg: IngestConfig, spec: UniMatSpec, mode: str, plan: SourcePlan) -> str:
    """Identity of the job's output: everything that changes which bytes get written."""
    ident = {
        "pipeline_version": PIPELINE_VERSION,
        "schema_version": SCHEMA_VERSION,
        "spec": spec.to_dict(),
        "split": {"mode": mode, "fractions": cfg.split.fractions if mode == "composition" else None, "salt": cfg.split.salt},
        "validate": to_dict(cfg.validate),
        "shards": [cfg.output.records_per_unit, cfg.output.max_shard_bytes, cfg.output.max_shard_samples],
        "source": {"format": cfg.source.format, "id_column": cfg.source.id_column, "files": plan.description.get("files")},
        "units": [u.digest() for u in plan.units],
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


# ----------------------------------------------------------------------------------------- executors
UnitRunner = Callable[[list[WorkUnit], JobContext], Iterator[dict[str, Any]]]


def run_local(units: list[WorkUnit], ctx: JobContext) -> Iterator[dict[str, Any]]:
    """The same units, one after another in this process (debugging, tests, the benchmark baseline)."""
    for unit in units:
        yield process_unit(unit, ctx)


def runner_for(cfg: IngestConfig) -> UnitRunner:
    if cfg.run.executor == "local":
        return run_local
    from .ray_executor import run_on_ray

    return lambda units, ctx: run_on_ray(units, ctx, cfg.run)


class Progress:
    """Logs one line per finished unit (and at most every ``every_s`` seconds after the first few)."""

    def __init__(self, total_units: int, total_hint: int, every_s: float = 5.0) -> None:
        self.total_units = total_units
        self.total_hint = total_hint
        self.every_s = every_s
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.units = self.read = self.written = self.quarantined = 0
        self.elapsed = 0.0  # seconds since the first unit started, at the last update

    def rate(self) -> float:
        """Records read per second since the first unit started."""
        return self.read / self.elapsed if self.elapsed > 0 else 0.0

    def update(self, record: dict[str, Any]) -> None:
        if self.units == 0:  # rates count from the first unit's start, not from cluster start-up
            self.t0 = time.perf_counter() - float(record.get("seconds", 0.0))
        self.units += 1
        c = record["counts"]
        self.read += c["read"]
        self.written += c["written"]
        self.quarantined += c["quarantined"]
        now = time.perf_counter() - self.t0
        self.elapsed = now
        if self.units <= 3 or self.units == self.total_units or now - self.last >= self.every_s:
            self.last = now
            rate = self.read / now if now > 0 else 0.0
            left = max(self.total_hint - self.read, 0)
            eta = f", ETA {left / rate:,.0f} s" if rate > 0 and left else ""
            log.info(
                "units %d/%d | read %s (%s/s) | written %s | quarantined %s%s",
                self.units, self.total_units, f"{self.read:,}", f"{rate:,.0f}", f"{self.written:,}",
                f"{self.quarantined:,}", eta,
            )


# ----------------------------------------------------------------------------------------- manifest
def _merge_stats(records: list[dict[str, Any]], splits: Iterable[str], coords: str):
    stats = LatticeStats(coords)
    props: dict[str, list[float]] = {}
    scale = 0.0
    for r in records:
        for split in splits:
            s = r["splits"].get(split)
            if not s:
                continue
            stats = stats.merge(LatticeStats(**s["lattice_stats"]))
            scale = max(scale, s["cartesian_scale"])
            for k, (n, tot, sq) in s["property_stats"].items():
                acc = props.setdefault(k, [0, 0.0, 0.0])
                acc[0] += n
                acc[1] += tot
                acc[2] += sq
    return stats, props, scale


def build_manifest(
    cfg: IngestConfig, spec: UniMatSpec, mode: str, plan: SourcePlan, fp: str, records: list[dict[str, Any]]
) -> dict[str, Any]:
    """The manifest dict from all unit records (in unit order, so float sums are reproducible)."""
    records = sorted(records, key=lambda r: r["unit"])
    shards = sorted((s for r in records for s in r["shards"]), key=lambda s: (SPLITS.index(s["split"]), s["path"]))
    present = [s for s in SPLITS if any(sh["split"] == s for sh in shards)]
    fit_splits = ["train"] if "train" in present else present
    stats, props, scale = _merge_stats(records, fit_splits, spec.coords)
    if stats.count == 0:
        raise ValueError("no structure was written: every record was quarantined (see quarantine/)")
    normalizer = Normalizer.from_stats(stats, spec)
    if spec.coords == "cartesian":
        normalizer = Normalizer(normalizer.coords, normalizer.lattice_mean, normalizer.lattice_std, max(scale, 1.0))
    property_stats = {}
    for k, (n, tot, sq) in sorted(props.items()):
        mean = tot / n
        property_stats[k] = {"count": int(n), "mean": mean, "std": float(np.sqrt(max(sq / n - mean * mean, 0.0)))}
    reasons: Counter[str] = Counter()
    for r in records:
        reasons.update(r["counts"]["quarantined_by_reason"])
    counts = {
        "read": sum(r["counts"]["read"] for r in records),
        "written": sum(r["counts"]["written"] for r in records),
        "quarantined": sum(reasons.values()),
        "quarantined_by_reason": dict(sorted(reasons.items())),
        # files of the source never opened (their records are not in "read"): see the summary
        "not_read": {k: int(plan.description.get(k, 0)) for k in ("links_skipped", "hidden_skipped")},
    }
    if counts["read"] != counts["written"] + counts["quarantined"]:  # a record lost silently is a bug, not data
        raise RuntimeError(f"record accounting broken: read {counts['read']} != written {counts['written']} + "
                           f"quarantined {counts['quarantined']}")
    from unimat_dist import __version__

    return {
        "schema_version": SCHEMA_VERSION,
        "format": FORMAT,
        "created_by": f"unimat-dist {__version__} (data_pipeline v{PIPELINE_VERSION})",
        "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "spec": spec.to_dict(),
        "normalizer": normalizer.to_dict(),
        "normalizer_fit_split": "train" if fit_splits == ["train"] else "all",
        "properties": sorted({p for r in records for p in r["properties"]}),
        "property_stats": property_stats,
        "splits": {
            s: {
                "samples": sum(sh["samples"] for sh in shards if sh["split"] == s),
                "shards": sum(1 for sh in shards if sh["split"] == s),
                "bytes": sum(sh["bytes"] for sh in shards if sh["split"] == s),
            }
            for s in present
        },
        "shards": [{k: s[k] for k in ("path", "split", "samples", "bytes", "sha256")} for s in shards],
        "sample_keys": {
            ARRAYS_MEMBER: list(ARRAY_NAMES),
            META_MEMBER: ["id", "formula", "reduced_formula", "num_atoms", "split", "source", "properties", "metadata"],
        },
        "source": plan.description,
        "split_policy": {"mode": mode, "fractions": cfg.split.fractions if mode == "composition" else None, "salt": cfg.split.salt},
        "counts": counts,
        "quarantine_files": [r["quarantine"] for r in records if r["quarantine"]],
        "job": {
            "fingerprint": fp,
            "units": len(records),
            "records_per_unit": cfg.output.records_per_unit,
            "max_shard_bytes": cfg.output.max_shard_bytes,
            "max_shard_samples": cfg.output.max_shard_samples,
            "config": to_dict(cfg),
        },
    }


# ----------------------------------------------------------------------------------------- the job
SPLIT_RE = "(" + "|".join(SPLITS) + ")"
LAYOUT = OutputLayout(
    kind="ingest",
    job_file=JOB_FILE,
    files=(
        re.escape(MANIFEST_NAME),
        re.escape(JOB_FILE),
        rf"{SPLIT_RE}/u\d{{6}}-\d+\.tar",
        rf"{QUARANTINE_DIR}/u\d{{6}}\.jsonl",
        rf"{UNITS_DIR}/u\d{{6}}\.json",
    ),
    dirs=(*SPLITS, QUARANTINE_DIR, UNITS_DIR),
)


def source_uris(cfg: IngestConfig, plan: SourcePlan) -> list[str]:
    """Every file or folder the job reads (the output may overlap none of them)."""
    uris = [cfg.source.uri] + [f.get("uri") for f in plan.description.get("files", [])]
    return [u for u in dict.fromkeys(uris) if u]


def _claim_output(output: str, opts: dict, fp: str, cfg: IngestConfig, plan: SourcePlan) -> None:
    """The shared output rule (``unimat_dist.output_guard``): resume our job, refuse anything else."""
    state = claim_output(output, opts, LAYOUT, fp, to_dict(cfg), overwrite=cfg.output.overwrite,
                         allow_nonempty=cfg.output.allow_nonempty, inputs=source_uris(cfg, plan))
    if state == "resume":
        log.info("resuming the job in %s", output)


def _range(pair, name: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in pair)
    if not 0 <= lo <= hi:
        raise ValueError(f"{name} must be [low, high] with 0 <= low <= high, got {pair}")
    return lo, hi


def make_context(cfg: IngestConfig, spec: UniMatSpec, mode: str, fp: str) -> JobContext:
    return JobContext(
        fingerprint=fp,
        spec=spec.to_dict(),
        split_mode=mode,
        fractions=check_fractions(cfg.split.fractions),
        salt=cfg.split.salt,
        output_uri=cfg.output.uri.rstrip("/"),
        output_options=dict(cfg.output.storage_options),
        source=asdict(cfg.source),
        source_options=dict(cfg.source.storage_options),
        cif_parser=cfg.validate.cif_parser,
        min_distance=cfg.validate.min_distance,
        max_atoms=cfg.validate.max_atoms,
        max_record_bytes=cfg.validate.max_record_bytes,
        lattice_length_range=_range(cfg.validate.lattice_length_range, "validate.lattice_length_range"),
        lattice_angle_range=_range(cfg.validate.lattice_angle_range, "validate.lattice_angle_range"),
        volume_per_atom_range=_range(cfg.validate.volume_per_atom_range, "validate.volume_per_atom_range"),
        max_shard_bytes=cfg.output.max_shard_bytes,
        max_shard_samples=cfg.output.max_shard_samples,
        scratch_dir=cfg.run.scratch_dir,
    )


def _absolute_paths(cfg: IngestConfig) -> IngestConfig:
    """Local paths made absolute: Ray workers may run in another working directory."""
    import dataclasses
    import os

    def fix(uri: str | None) -> str | None:
        return uri if uri is None or "://" in uri else os.path.abspath(os.path.expanduser(uri))

    return dataclasses.replace(
        cfg,
        source=dataclasses.replace(cfg.source, uri=fix(cfg.source.uri)),
        output=dataclasses.replace(cfg.output, uri=fix(cfg.output.uri) or ""),
    )


def run_ingest(cfg: IngestConfig, runner: UnitRunner | None = None) -> IngestSummary:
    """Run (or resume) an ingest job; returns the summary after ``manifest.json`` is written."""
    t0 = time.perf_counter()
    if not cfg.output.uri:
        raise ValueError("output.uri is required (--output)")
    cfg = _absolute_paths(cfg)
    if cfg.output.records_per_unit < 1 or cfg.output.max_shard_bytes < 4096:
        raise ValueError("output.records_per_unit must be >= 1 and output.max_shard_bytes >= 4096")
    output = cfg.output.uri.rstrip("/")
    opts = dict(cfg.output.storage_options)
    spec = resolve_spec(cfg)
    check_fractions(cfg.split.fractions)
    log.info("planning %s source %s", cfg.source.format, cfg.source.uri or cfg.source.dataset)
    if cfg.validate.max_record_bytes < 1024:
        raise ValueError("validate.max_record_bytes must be >= 1024")
    plan = plan_source(cfg.source, cfg.output.records_per_unit, cfg.source.storage_options or None,
                       cfg.validate.max_record_bytes)
    mode = resolve_split_mode(cfg, plan)
    fp = fingerprint(cfg, spec, mode, plan)
    total_rows = sum(int(f.get("rows", f.get("count", 0)) or 0) for f in plan.description.get("files", []))
    log.info("%s | %d work units, ~%s records | split mode %s | job %s", spec.describe(), len(plan.units),
             f"{total_rows:,}", mode, fp)
    _claim_output(output, opts, fp, cfg, plan)
    job = UnitJob(output, opts, LAYOUT, fp, plan.units, unit_name, UNITS_DIR)
    ctx = make_context(cfg, spec, mode, fp)
    progress = Progress(len(job.pending), total_rows - sum(r["counts"]["read"] for r in job.done.values()))
    metrics = IngestMetrics(f"{output.rsplit('/', 1)[-1]}-{fp[:8]}", len(plan.units), units_skipped=len(job.done))

    def committed(rec: dict[str, Any]) -> None:
        progress.update(rec)
        metrics.unit(rec, progress.rate())

    records = job.run(lambda pending: (runner or runner_for(cfg))(pending, ctx), committed)
    manifest = build_manifest(cfg, spec, mode, plan, fp, list(records.values()))
    muri = job.publish(manifest, MANIFEST_NAME)
    parsers: Counter[str] = Counter()
    for r in records.values():
        parsers.update(r["counts"].get("parsers", {}))
    summary = IngestSummary(
        output_uri=output,
        manifest_uri=muri,
        units=len(plan.units),
        units_skipped=len(job.done),
        read=manifest["counts"]["read"],
        written=manifest["counts"]["written"],
        quarantined=manifest["counts"]["quarantined"],
        quarantined_by_reason=manifest["counts"]["quarantined_by_reason"],
        split_samples={k: v["samples"] for k, v in manifest["splits"].items()},
        shards=len(manifest["shards"]),
        bytes=sum(s["bytes"] for s in manifest["shards"]),
        seconds=time.perf_counter() - t0,
        parsers=dict(sorted(parsers.items())),
        not_read=manifest["counts"]["not_read"],
    )
    for line in summary.lines():
        log.info(line)
    return summary
