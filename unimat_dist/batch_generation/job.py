"""The batch generation job: plan -> claim/resume -> run pending units (Ray or local) -> manifest -> summary.

    from unimat_dist.batch_generation import load_batch_config, run_generate_batch
    summary = run_generate_batch(load_batch_config("cluster/jobs/generate_tiny_cpu.yaml"))

Output layout (``output.uri``; file path, file://, s3:// or gs://):

    manifest.json             written last: shards with their request ids, counts, validity rates, rejections
    summary.csv, summary.json one row per sample of the job (``BATCH_TABLE_KEYS``: the facts of
                              ``unimat_dist.crystal_facts`` - space group, density, shortest distance,
                              validity flags - plus request id, sample, shard and position in it);
                              summary.json holds them under ``"crystals"``
    shards/part-000000.cif    the decoded crystals of one unit (or .extxyz, whose frames carry the facts)
    _units/part-000000.json   the unit's commit record (written after its shard): per request seed,
                              formulas, validity flags and facts of every sample; rejected requests
    _job.json                 fingerprint of the job that owns this output
    gallery/index.html        the static offline gallery of the first ``output.gallery_limit`` crystals
                              (``unimat_dist.gallery``), written after the manifest on a local output
                              (``output.gallery=false`` skips it; for s3:// / gs:// run ``unimat gallery`` on
                              a local copy); a gallery that cannot be built is a warning, never a failed job

Rerunning the same job resumes: units with a commit record are skipped, so their request ids are never
redone, and the others run (an interrupted unit rewrites its shard with the same seeds). A different
job on the same output (other checkpoint, requests, sampler settings, format or shard size) is refused
unless ``output.overwrite`` is set, which deletes only the files a generate-batch job writes (``LAYOUT``,
its gallery's files included); a non-empty folder that no generate-batch job owns is refused
(``output.allow_nonempty`` to write next to other files), and so is an output overlapping the checkpoint or
the request list
(rules: ``unimat_dist.output_guard``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

from unimat_dist.config import load_config, to_dict
from unimat_dist.storage import exists, join_uri, read_bytes, write_bytes_atomic
from unimat_dist.gallery.build import GALLERY_FILES, GALLERY_SUBDIRS
from unimat_dist.output_guard import OutputLayout, UnitJob, claim_output

from .config import GenerateBatchConfig
from .requests import BatchRequest, plan_requests, requests_digest
from .unit_worker import SHARDS_DIR, UNITS_DIR, JobContext, WorkUnit, generate_unit, plan_units, unit_name

log = logging.getLogger("unimat.generate_batch")

JOB_VERSION = 2  # bump when the bytes of a shard change for the same job (2: facts in records and extxyz frames)
JOB_FILE = "_job.json"
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "unimat-dist/generated-structures"
TABLE_CSV, TABLE_JSON = "summary.csv", "summary.json"
GALLERY_DIR = "gallery"


def load_batch_config(path=None, overrides: list[str] | None = None) -> GenerateBatchConfig:
    return load_config(GenerateBatchConfig, path, overrides)


@dataclass
class BatchSummary:
    output_uri: str
    manifest_uri: str
    requests: int
    requests_skipped: int  # already committed by an earlier run
    requests_run: int
    rejected: int
    samples: int
    units: int
    units_skipped: int
    validity: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    gallery: str | None = None  # gallery/index.html of a local output
    gallery_seconds: float = 0.0

    def lines(self) -> list[str]:
        v = self.validity

        def rate(name: str) -> str:
            r = v.get(f"{name}_rate")
            return "n/a" if r is None else f"{100 * r:.1f}%"

        return [
            f"generate-batch summary for {self.output_uri}",
            f"  requests    {self.requests:>10,}   ({self.requests_skipped:,} already done, {self.requests_run:,} run "
            f"now, {self.rejected:,} rejected; {self.units} units, {self.units_skipped} skipped)",
            f"  crystals    {self.samples:>10,}   in {self.seconds:.1f} s",
            f"  decoded {rate('decoded')} | structure valid {rate('structure_valid')} | composition valid "
            f"{rate('composition_valid')} | match request {rate('matches_request')} | valid {rate('valid')}",
            f"  manifest    {self.manifest_uri}",
        ] + ([f"  gallery     {self.gallery}   ({self.gallery_seconds:.1f} s)"] if self.gallery else [])


# ----------------------------------------------------------------------------------------- identity
def resolve_checkpoint(cfg: GenerateBatchConfig) -> str:
    """The exact inference file the job uses: a run directory resolves to its newest complete step now,
    so every actor (and every resumed run) loads the same weights."""
    from unimat_dist.inference import resolve_inference_path

    ckpt = cfg.model.checkpoint
    if not ckpt:
        raise ValueError("model.checkpoint is required (inference.pt, a checkpoint/run directory, or a URI)")
    if ckpt.startswith("file://"):
        ckpt = ckpt[len("file://"):]
    return resolve_inference_path(ckpt, cfg.model.storage_options)


def resolve_job_sampling(cfg: GenerateBatchConfig, defaults: dict[str, Any], timesteps: int) -> GenerateBatchConfig:
    """``cfg`` with every sampler setting decided: the config's value, else the checkpoint's release settings
    (``defaults``: its ``"sampling"``), else the library's (``inference.resolve_sampling``, as the service and
    ``unimat sample`` do). Done once by the driver, so the fingerprint, the manifest and every unit use the
    same values; steps stay null where the sampler's default applies."""
    from unimat_dist.inference import resolve_sampling

    s = cfg.sampling
    r = resolve_sampling(defaults, timesteps, s.sampler, s.steps, s.eta, s.noise_scale, s.restart)
    r["restart"] = list(r["restart"]) if r["restart"] is not None else None
    distinct = s.distinct_compositions
    r["distinct_compositions"] = bool(defaults.get("distinct_compositions", False) if distinct is None else distinct)
    return dataclasses.replace(cfg, sampling=dataclasses.replace(s, **r))


def _checkpoint_sampling(checkpoint: str, storage_options: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """(the checkpoint's sampler defaults, its T), read on the driver before any unit runs."""
    from unimat_dist.inference import load_inference_checkpoint

    payload = load_inference_checkpoint(checkpoint, "cpu", storage_options)
    return dict(payload["sampling"]), int(payload["diffusion"]["timesteps"])


# sampler settings added after outputs existed: at these values they stay out of the fingerprint
_UNFINGERPRINTED_DEFAULTS = {"noise_scale": 1.0, "restart": None, "distinct_compositions": False}


def fingerprint(cfg: GenerateBatchConfig, checkpoint: str, requests: list[BatchRequest]) -> str:
    """Identity of the job's output: everything that changes which crystals are written where.
    ``sampling.max_batch_samples`` is left out: it only regroups rows into loops; ``noise_scale``,
    ``restart`` and ``distinct_compositions`` only when they are the defaults 1, null and false (outputs
    written before they existed keep their identity). ``cfg``'s sampler settings must be resolved (``resolve_job_sampling``): the identity is what
    runs, not what the config left to the checkpoint."""
    if (cfg.sampling.sampler is None or cfg.sampling.eta is None or cfg.sampling.noise_scale is None
            or cfg.sampling.distinct_compositions is None):
        raise ValueError("fingerprint() needs resolved sampler settings (resolve_job_sampling)")
    ident = {
        "job_version": JOB_VERSION,
        "checkpoint": checkpoint,
        "requests": requests_digest(requests),
        "sampling": {k: v for k, v in to_dict(cfg.sampling).items()
                     if k != "max_batch_samples"
                     and not (k in _UNFINGERPRINTED_DEFAULTS and v == _UNFINGERPRINTED_DEFAULTS[k])},
        "exact_counts": cfg.requests.exact_counts,
        "guidance": cfg.requests.guidance,
        "format": cfg.output.format,
        "requests_per_shard": cfg.output.requests_per_shard,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


LAYOUT = OutputLayout(
    kind="generate-batch",
    job_file=JOB_FILE,
    files=(
        re.escape(MANIFEST_NAME),
        re.escape(JOB_FILE),
        re.escape(TABLE_CSV),
        re.escape(TABLE_JSON),
        rf"{SHARDS_DIR}/part-\d{{6}}\.(cif|extxyz)",
        rf"{UNITS_DIR}/part-\d{{6}}\.json",
        *(f"{GALLERY_DIR}/{p}" for p in GALLERY_FILES),
    ),
    dirs=(SHARDS_DIR, UNITS_DIR, GALLERY_DIR, *(f"{GALLERY_DIR}/{d}" for d in GALLERY_SUBDIRS)),
    title="generation",
)


def _claim_output(output: str, opts: dict, fp: str, cfg: GenerateBatchConfig) -> None:
    """The shared output rule (``unimat_dist.output_guard``): resume our job, refuse anything else."""
    job_uri = join_uri(output, JOB_FILE)
    hint = ""
    if exists(job_uri, opts):  # explain the usual cause of a changed fingerprint
        try:
            other = json.loads(read_bytes(job_uri, opts))
            theirs = (other.get("config") or {}).get("model", {}).get("checkpoint")
        except (ValueError, AttributeError):
            theirs = None
        if theirs and theirs != cfg.model.checkpoint:
            hint = (f"; it used checkpoint {theirs} and this job resolves to {cfg.model.checkpoint} (a run directory "
                    "resolves to its newest step: set model.checkpoint to the file to resume)")
    state = claim_output(output, opts, LAYOUT, fp, to_dict(cfg), overwrite=cfg.output.overwrite,
                         allow_nonempty=cfg.output.allow_nonempty,
                         inputs=[cfg.model.checkpoint, cfg.requests.uri], hint=hint)
    if state == "resume":
        log.info("resuming the job in %s", output)


# ----------------------------------------------------------------------------------------- executors
UnitRunner = Callable[[list[WorkUnit], JobContext, GenerateBatchConfig], Iterator[dict[str, Any]]]


def run_local(units: list[WorkUnit], ctx: JobContext, cfg: GenerateBatchConfig) -> Iterator[dict[str, Any]]:
    """The same units one after another in this process (debugging, tests, small jobs)."""
    import torch

    from unimat_dist.generation import open_generator

    if cfg.run.torch_threads:
        torch.set_num_threads(cfg.run.torch_threads)
    g = open_generator(cfg.model.checkpoint, cfg.model.storage_options, device=cfg.model.device,
                       precision=cfg.model.precision)
    for unit in units:
        yield generate_unit(g, unit, ctx)


def runner_for(cfg: GenerateBatchConfig) -> UnitRunner:
    if cfg.run.executor == "local":
        return run_local
    from .ray_pool import run_on_ray

    return run_on_ray


# ----------------------------------------------------------------------------------------- tables
def _table_keys() -> tuple[str, ...]:
    from unimat_dist.crystal_files import TABLE_KEYS

    return (*TABLE_KEYS, "request_id", "sample", "shard", "shard_index")


def crystal_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per sample of the job, in unit / request / sample order: ``index`` (running), ``name``
    (``<request id>__<sample>``, the CIF block name), the facts, ``cif``/``cif_sym``/``poscar``/
    ``extxyz_frame`` None (a batch writes shards, not one file per crystal), then ``request_id``,
    ``sample``, ``shard`` (its path, None when not decoded) and ``shard_index`` (block or frame number)."""
    from unimat_dist.crystal_facts import empty_facts
    from unimat_dist.crystal_files import FILE_KEYS

    rows: list[dict[str, Any]] = []
    for r in sorted(records, key=lambda r: r["unit"]):
        shard = (r.get("shard") or {}).get("path")
        position = 0
        for e in r["requests"]:
            facts = e.get("facts") or [None] * len(e["flags"])
            for k, (flags, f) in enumerate(zip(e["flags"], facts)):
                if f is None:  # a record written before facts existed: what it knows
                    f = {**empty_facts(), **flags, "formula": e["formulas"][k]}
                decoded = bool(f.get("decoded"))
                rows.append({"index": len(rows), "name": f"{e['id']}__{k}", **f, **dict.fromkeys(FILE_KEYS),
                             "request_id": e["id"], "sample": k, "shard": shard if decoded else None,
                             "shard_index": position if decoded else None})
                position += decoded
    return rows


def write_tables(output: str, opts: dict, records: list[dict[str, Any]], fp: str) -> list[str]:
    """summary.csv and summary.json of the job (each rewritten only when its bytes change, so a rerun of
    a finished job leaves them untouched)."""
    from unimat_dist.crystal_files import table_csv

    rows = crystal_rows(records)
    keys = _table_keys()
    bodies = {
        TABLE_CSV: table_csv(rows, keys).encode(),
        TABLE_JSON: json.dumps({"format": "unimat-dist/crystal-table", "fingerprint": fp, "keys": list(keys),
                                "crystals": rows}, indent=1).encode(),
    }
    written = []
    for name, data in bodies.items():
        uri = join_uri(output, name)
        if exists(uri, opts) and read_bytes(uri, opts) == data:
            continue
        write_bytes_atomic(uri, data, opts)
        written.append(name)
    return written


# ----------------------------------------------------------------------------------------- manifest
def build_manifest(cfg: GenerateBatchConfig, checkpoint: str, fp: str, records: list[dict[str, Any]],
                   total_requests: int) -> dict[str, Any]:
    from unimat_dist import __version__
    from unimat_dist.generation import summarize_flags

    records = sorted(records, key=lambda r: r["unit"])
    flags = [f for r in records for e in r["requests"] for f in e["flags"]]
    rejected = [x for r in records for x in r["rejected"]]
    return {
        "format": MANIFEST_FORMAT,
        "schema_version": 1,
        "created_by": f"unimat-dist {__version__} (generate-batch v{JOB_VERSION})",
        "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "checkpoint": checkpoint,
        "fingerprint": fp,
        "output_format": cfg.output.format,
        "counts": {
            "requests": total_requests,
            "generated_requests": sum(len(r["requests"]) for r in records),
            "rejected_requests": len(rejected),
            "samples": len(flags),
            "structures_in_shards": sum((r["shard"] or {}).get("structures", 0) for r in records),
        },
        "validity": summarize_flags(flags),
        "shards": [
            {**r["shard"], "unit": r["name"], "requests": [e["id"] for e in r["requests"]]}
            for r in records if r["shard"]
        ],
        "units": [{"name": r["name"], "record": f"{UNITS_DIR}/{r['name']}.json", "requests": len(r["requests"]),
                   "rejected": len(r["rejected"]), "seconds": r["seconds"]} for r in records],
        "rejected": rejected,
        "tables": {"csv": TABLE_CSV, "json": TABLE_JSON},
        "generation_seconds": sum(r["seconds"] for r in records),
        "config": to_dict(cfg),
    }


class Progress:
    """One log line per finished unit (at most every ``every_s`` seconds after the first few)."""

    def __init__(self, total_units: int, total_samples: int, every_s: float = 5.0) -> None:
        self.total_units, self.total_samples, self.every_s = total_units, total_samples, every_s
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.units = self.samples = self.handled = self.rejected = 0

    def update(self, record: dict[str, Any]) -> None:
        self.units += 1
        self.samples += record["samples"]
        self.handled += record["requested_samples"]
        self.rejected += len(record["rejected"])
        now = time.perf_counter() - self.t0
        if self.units <= 3 or self.units == self.total_units or now - self.last >= self.every_s:
            self.last = now
            rate = self.samples / now if now > 0 else 0.0
            left = max(self.total_samples - self.handled, 0)
            eta = f", ETA {left / rate:,.0f} s" if rate > 0 and left else ""
            log.info("units %d/%d | crystals %s (%.1f/s) | rejected requests %d%s", self.units, self.total_units,
                     f"{self.samples:,}", rate, self.rejected, eta)


# ----------------------------------------------------------------------------------------- the job
def _absolute(uri: str | None) -> str | None:
    import os

    return uri if uri is None or "://" in uri else os.path.abspath(os.path.expanduser(uri))


def write_job_gallery(cfg: GenerateBatchConfig, output: str,
                      tables_changed: bool = True) -> tuple[str | None, float]:
    """The job's gallery (``gallery/index.html``) on a local output; (its path or None, seconds). Like the
    tables, it is left as it is when a rerun of a finished job changed neither table."""
    import os

    from unimat_dist.storage import is_local, split_uri

    if not cfg.output.gallery:
        return None, 0.0
    if not is_local(output):
        log.info("gallery not written: %s is not a local folder (run `unimat gallery` on a local copy)", output)
        return None, 0.0
    from unimat_dist.gallery import write_gallery

    t = time.perf_counter()
    root = split_uri(output)[1]
    page = os.path.join(root, GALLERY_DIR, "index.html")
    if not tables_changed and os.path.isfile(page) and os.path.isfile(os.path.join(root, GALLERY_DIR, "data",
                                                                                      "crystals.js")):
        return page, 0.0
    limit = cfg.output.gallery_limit
    written = write_gallery(root, os.path.join(root, GALLERY_DIR), limit=limit,
                            title=f"generate-batch: {os.path.basename(root.rstrip('/'))}")
    return (str(written) if written is not None else None), time.perf_counter() - t


def run_generate_batch(cfg: GenerateBatchConfig, runner: UnitRunner | None = None) -> BatchSummary:
    """Run (or resume) a batch generation job; returns the summary after ``manifest.json`` is written."""
    t0 = time.perf_counter()
    if not cfg.output.uri:
        raise ValueError("output.uri is required")
    # local paths made absolute: Ray workers may run in another working directory
    cfg = dataclasses.replace(
        cfg,
        output=dataclasses.replace(cfg.output, uri=_absolute(cfg.output.uri).rstrip("/")),
        requests=dataclasses.replace(cfg.requests, uri=_absolute(cfg.requests.uri)),
    )
    checkpoint = resolve_checkpoint(cfg)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, checkpoint=checkpoint))
    cfg = resolve_job_sampling(cfg, *_checkpoint_sampling(checkpoint, cfg.model.storage_options))
    output, opts = cfg.output.uri, dict(cfg.output.storage_options)
    requests = plan_requests(cfg.requests)
    units = plan_units(requests, cfg.output.requests_per_shard)
    fp = fingerprint(cfg, checkpoint, requests)
    total_samples = sum(r.num_samples for r in requests)
    sm = cfg.sampling
    log.info("%s | %s requests, %s crystals, %d units | %s-%s eta %g noise scale %g restart %s%s | job %s",
             checkpoint, f"{len(requests):,}", f"{total_samples:,}", len(units), sm.sampler, sm.steps or "default",
             sm.eta, sm.noise_scale, sm.restart or "none",
             " | compositions drawn without repeats" if sm.distinct_compositions else "", fp)
    _claim_output(output, opts, fp, cfg)
    job = UnitJob(output, opts, LAYOUT, fp, units, unit_name, UNITS_DIR)
    done_requests = sum(len(u.requests) for u in units if u.index in job.done)
    if job.done:
        log.info("%d of %d requests already committed; running the other %d", done_requests, len(requests),
                 len(requests) - done_requests)
    ctx = JobContext(
        fingerprint=fp, output_uri=output, output_options=opts, format=cfg.output.format,
        sampler=cfg.sampling.sampler, steps=cfg.sampling.steps, eta=cfg.sampling.eta,
        noise_scale=cfg.sampling.noise_scale, restart=cfg.sampling.restart, seed=cfg.sampling.seed,
        distinct_compositions=cfg.sampling.distinct_compositions,
        max_batch_samples=cfg.sampling.max_batch_samples, exact_counts=cfg.requests.exact_counts,
        guidance=cfg.requests.guidance,
    )
    progress = Progress(len(job.pending), sum(r.num_samples for u in job.pending for r in u.requests))
    records = job.run(lambda pending: (runner or runner_for(cfg))(pending, ctx, cfg), progress.update)
    tables = write_tables(output, opts, list(records.values()), fp)  # before the manifest, which is written last
    manifest = build_manifest(cfg, checkpoint, fp, list(records.values()), len(requests))
    muri = job.publish(manifest, MANIFEST_NAME)
    gallery, gallery_s = write_job_gallery(cfg, output, tables_changed=bool(tables))
    summary = BatchSummary(
        output_uri=output,
        manifest_uri=muri,
        requests=len(requests),
        requests_skipped=done_requests,
        requests_run=len(requests) - done_requests,
        rejected=manifest["counts"]["rejected_requests"],
        samples=manifest["counts"]["samples"],
        units=len(units),
        units_skipped=len(job.done),
        validity=manifest["validity"],
        seconds=time.perf_counter() - t0,
        gallery=gallery,
        gallery_seconds=gallery_s,
    )
    for line in summary.lines():
        log.info(line)
    return summary
