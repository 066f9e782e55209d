"""The request list of a batch job: CSV rows, an inline list of formulas, or an unconditional count.

A request is ``num_samples`` crystals of one composition (or none) with optional property targets,
under a unique id; the id is the unit of resumption (a rerun never redoes a committed id) and, with
the base seed, fixes the request's random stream (``request_seed``), so its crystals do not depend on
how requests are grouped into shards or loops.

CSV format (``requests.source: csv``): a header row; ``composition_column`` holds formulas (an empty
cell is an unconditional request); optional ``id_column``, ``samples_column`` and property columns
(empty cell = no target). Structural problems (missing column, duplicate id, bad sample count or
property value) are errors naming the row; compositions are checked against the model later, per
request, and rejected ones are listed in the manifest without stopping the job.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from .config import RequestsConfig


@dataclass(frozen=True)
class BatchRequest:
    id: str
    composition: Optional[str]  # formula, or None for unconditional
    num_samples: int
    properties: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BatchRequest":
        return cls(d["id"], d["composition"], int(d["num_samples"]), dict(d.get("properties") or {}))


def request_seed(base_seed: int, request_id: str) -> int:
    """A 63-bit seed from the job's base seed and a request id (stable across runs and layouts)."""
    digest = hashlib.sha256(f"{int(base_seed)}:{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def requests_digest(requests: list[BatchRequest]) -> str:
    """Identity of a request list (part of the job fingerprint)."""
    h = hashlib.sha256()
    for r in requests:
        h.update(json.dumps(r.to_dict(), sort_keys=True).encode())
        h.update(b"\n")
    return h.hexdigest()[:24]


def _positive_int(value: str, what: str) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ValueError(f"{what}: {value!r} is not a whole number") from None
    if n < 1:
        raise ValueError(f"{what}: must be >= 1, got {n}")
    return n


def _csv_requests(cfg: RequestsConfig) -> list[BatchRequest]:
    from unimat_dist.storage import open_input

    if not cfg.uri:
        raise ValueError("requests.uri is required for requests.source=csv")
    with open_input(cfg.uri, "rb", cfg.storage_options or None, compression="infer") as fh:
        text = fh.read().decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(text))
    columns = reader.fieldnames or []
    wanted = [cfg.composition_column, *(c for c in (cfg.id_column, cfg.samples_column) if c), *cfg.property_columns]
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise ValueError(f"{cfg.uri}: column(s) {missing} not found; the CSV has {columns}")
    out: list[BatchRequest] = []
    for n, row in enumerate(reader):
        if cfg.limit is not None and len(out) >= cfg.limit:
            break
        where = f"{cfg.uri} data row {n} (line {n + 2})"
        rid = (row[cfg.id_column] or "").strip() if cfg.id_column else f"row-{n}"
        if not rid:
            raise ValueError(f"{where}: empty {cfg.id_column!r}")
        comp = (row[cfg.composition_column] or "").strip() or None
        samples = (_positive_int(row[cfg.samples_column], f"{where}, column {cfg.samples_column!r}")
                   if cfg.samples_column else cfg.samples_per_request)
        props = dict(cfg.properties)
        for col in cfg.property_columns:
            cell = (row[col] or "").strip()
            if cell:
                try:
                    props[col] = float(cell)
                except ValueError:
                    raise ValueError(f"{where}, column {col!r}: {cell!r} is not a number") from None
        out.append(BatchRequest(rid, comp, samples, props))
    return out


def plan_requests(cfg: RequestsConfig) -> list[BatchRequest]:
    """The job's requests, in source order; ``ValueError`` naming the row/field for malformed input."""
    if cfg.samples_per_request < 1:
        raise ValueError(f"requests.samples_per_request must be >= 1, got {cfg.samples_per_request}")
    if cfg.source == "csv":
        out = _csv_requests(cfg)
    elif cfg.source == "list":
        if not cfg.compositions:
            raise ValueError("requests.compositions is empty (requests.source=list)")
        out = [BatchRequest(f"list-{i}", c.strip() or None, cfg.samples_per_request, dict(cfg.properties))
               for i, c in enumerate(cfg.compositions)]
    else:
        total = int(cfg.unconditional_samples)
        if total < 1:
            raise ValueError("requests.unconditional_samples must be >= 1 (requests.source=unconditional)")
        per = cfg.samples_per_request
        out = [BatchRequest(f"uncond-{i}", None, min(per, total - i * per), dict(cfg.properties))
               for i in range((total + per - 1) // per)]
    if cfg.limit is not None:
        out = out[: cfg.limit]
    seen: dict[str, int] = {}
    for i, r in enumerate(out):
        if r.id in seen:
            raise ValueError(f"request id {r.id!r} appears twice (requests {seen[r.id]} and {i}); ids must be unique")
        seen[r.id] = i
    if not out:
        raise ValueError("the request list is empty")
    return out
