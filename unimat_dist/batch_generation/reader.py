"""Reading a batch job's output back: the manifest, the commit records and the crystals of every shard.

    from unimat_dist.batch_generation.reader import read_generated_manifest, iter_generated
    m = read_generated_manifest("s3://bucket/gen")
    for request_id, sample, structure in iter_generated("s3://bucket/gen"):
        ...

Only shards listed in ``manifest.json`` are read, so leftovers of an interrupted run are never seen.
"""
from __future__ import annotations

import json
from typing import Any, Iterator

from unimat_dist.storage import join_uri, read_bytes

from .job import MANIFEST_FORMAT, MANIFEST_NAME
from .shards import read_shard


def read_generated_manifest(uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    raw = json.loads(read_bytes(join_uri(uri, MANIFEST_NAME), storage_options))
    if raw.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{uri}/{MANIFEST_NAME} is not a generate-batch manifest (format {raw.get('format')!r})")
    return raw


def read_unit_records(uri: str, storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The commit records of every unit in the manifest, in unit order."""
    m = read_generated_manifest(uri, storage_options)
    return [json.loads(read_bytes(join_uri(uri, u["record"]), storage_options)) for u in m["units"]]


def iter_generated(uri: str, storage_options: dict[str, Any] | None = None) -> Iterator[tuple[str, int, Any]]:
    """``(request_id, sample_index, pymatgen Structure)`` of every decoded crystal, shard by shard.

    The order inside a shard is its record's order (requests, then samples, undecoded ones skipped);
    CIF shards are parsed block by block with pymatgen, which refuses crystals with coincident atoms
    (``ValueError`` naming the block): use ``output.format: extxyz`` for raw model output.
    """
    m = read_generated_manifest(uri, storage_options)
    fmt = m["output_format"]
    records = {u["name"]: u["record"] for u in m["units"]}
    for shard in m["shards"]:
        rec = json.loads(read_bytes(join_uri(uri, records[shard["unit"]]), storage_options))
        keys = [(e["id"], k) for e in rec["requests"] for k, f in enumerate(e["formulas"]) if f is not None]
        data = read_bytes(join_uri(uri, shard["path"]), storage_options)
        structures = list(read_shard(data, fmt))
        if len(structures) != len(keys):
            raise ValueError(f"{shard['path']}: {len(structures)} crystals, its record lists {len(keys)}")
        for (rid, k), s in zip(keys, structures):
            yield rid, k, s
