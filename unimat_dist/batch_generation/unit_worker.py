"""One work unit of a batch job: sample its requests, write its shard, then commit its record.

Commit protocol (object stores have no atomic rename): the shard is written first, in one PUT under its
final name (``shards/part-000042.cif``); the unit's commit record (``_units/part-000042.json``) is
written second, and is what makes the unit count as done. A unit killed before its record exists is
redone by the next run and overwrites its shard with the same requests (same seeds). A unit's record
holds, per request, its seed, the formula, validity flags and facts (``unimat_dist.crystal_facts``: space
group, density, shortest distance, ...) of every sample, and the shard's size and sha256; rejected
requests (composition outside the model's system, ...) are listed with reasons.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from .requests import BatchRequest, request_seed
from .shards import SUFFIX, shard_bytes

UNITS_DIR = "_units"
SHARDS_DIR = "shards"


def unit_name(index: int) -> str:
    return f"part-{index:06d}"


@dataclass
class WorkUnit:
    index: int
    requests: list[BatchRequest]

    def digest(self) -> str:
        """Identity of the unit's content (its requests); a record with another digest is not this unit's."""
        body = json.dumps([r.to_dict() for r in self.requests], sort_keys=True).encode()
        return hashlib.sha256(body).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "requests": [r.to_dict() for r in self.requests]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "WorkUnit":
        return cls(int(d["index"]), [BatchRequest.from_dict(r) for r in d["requests"]])


@dataclass
class JobContext:
    """What every unit needs, plain data (shipped to Ray actors)."""

    fingerprint: str
    output_uri: str
    output_options: dict[str, Any] = field(default_factory=dict)
    format: str = "cif"
    sampler: str = "ddim"
    steps: int | None = None
    eta: float = 0.0
    noise_scale: float = 1.0
    restart: list[int] | None = None
    seed: int = 0
    distinct_compositions: bool = False
    max_batch_samples: int = 256
    exact_counts: bool = True
    guidance: float = 0.0


def plan_units(requests: list[BatchRequest], per_unit: int) -> list[WorkUnit]:
    """Consecutive requests in groups of ``per_unit`` (the last one may be smaller)."""
    if per_unit < 1:
        raise ValueError(f"output.requests_per_shard must be >= 1, got {per_unit}")
    return [WorkUnit(i // per_unit, requests[i:i + per_unit]) for i in range(0, len(requests), per_unit)]


def generate_unit(g, unit: WorkUnit, ctx: JobContext) -> dict[str, Any]:
    """Generate, write and commit one unit with a loaded generator; returns its commit record."""
    from unimat_dist.crystal_facts import crystal_facts
    from unimat_dist.storage import join_uri, write_bytes_atomic
    from unimat_dist.generation import GenerationJob, prepare_job, run_jobs, validity_flags
    from unimat_dist.inference import SampleRequest

    t0 = time.perf_counter()
    accepted: list[tuple[BatchRequest, Any]] = []
    rejected = []
    for r in unit.requests:
        request = SampleRequest(r.composition, ctx.exact_counts, dict(r.properties), ctx.guidance)
        job = GenerationJob(r.num_samples, request, ctx.sampler, ctx.steps, ctx.eta, request_seed(ctx.seed, r.id),
                            noise_scale=ctx.noise_scale, restart=ctx.restart, distinct=ctx.distinct_compositions)
        try:
            accepted.append((r, prepare_job(g, job)))
        except ValueError as exc:
            rejected.append({"id": r.id, "composition": r.composition, "reason": str(exc)})
    if ctx.max_batch_samples < max((j.num_samples for _, j in accepted), default=0):
        raise ValueError(f"sampling.max_batch_samples={ctx.max_batch_samples} is smaller than a request of "
                         f"{max(j.num_samples for _, j in accepted)} samples; a request runs in one denoising loop")
    results = run_jobs(g, [j for _, j in accepted], ctx.max_batch_samples) if accepted else []
    entries, items = [], []
    for (r, job), structures in zip(accepted, results):
        flags = [validity_flags(s, r.composition, ctx.exact_counts) for s in structures]
        facts = [crystal_facts(s, flags=f) for s, f in zip(structures, flags)]
        entries.append({
            "id": r.id,
            "composition": r.composition,
            "num_samples": r.num_samples,
            "seed": job.seed,
            "steps": job.steps,
            "formulas": [s.composition.reduced_formula if s is not None else None for s in structures],
            "flags": flags,
            "facts": facts,
        })
        items += [(r.id, k, s, f) for k, (s, f) in enumerate(zip(structures, facts))]
    name = unit_name(unit.index)
    shard = None
    data, count = shard_bytes(items, ctx.format)
    if count:
        path = f"{SHARDS_DIR}/{name}{SUFFIX[ctx.format]}"
        write_bytes_atomic(join_uri(ctx.output_uri, path), data, ctx.output_options)
        shard = {"path": path, "structures": count, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    record = {
        "unit": unit.index,
        "name": name,
        "fingerprint": ctx.fingerprint,
        "digest": unit.digest(),
        "shard": shard,
        "requests": entries,
        "rejected": rejected,
        "samples": sum(e["num_samples"] for e in entries),
        "requested_samples": sum(r.num_samples for r in unit.requests),  # incl. rejected requests
        "seconds": time.perf_counter() - t0,
    }
    write_bytes_atomic(join_uri(ctx.output_uri, UNITS_DIR, f"{name}.json"), json.dumps(record).encode(),
                       ctx.output_options)
    return record
