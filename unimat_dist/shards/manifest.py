"""The dataset manifest: the single file that says what a shard set contains (written last by ingest).

``read_manifest(uri)`` accepts the manifest's URI or the dataset directory (``.../manifest.json`` is
appended), validates it and returns a ``Manifest``. Schema (version 1), all keys always present:

    schema_version        1
    format                "unimat-webdataset"
    created_by/created_at producer and UTC time
    spec                  UniMatSpec.to_dict(): max_atoms_per_element (L), coords, elements, H, W
    normalizer            Normalizer.to_dict(), fitted on ``normalizer_fit_split``
    normalizer_fit_split  "train", or "all" when the source has no train split (e.g. bundled perov_5)
    properties            sorted property names present in the samples
    property_stats        {name: {count, mean, std}} over the same split as the normalizer
    splits                {split: {samples, shards, bytes}}
    shards                [{path (relative to the manifest), split, samples, bytes, sha256}]
    sample_keys           tar member extensions of a sample and what they hold
    source                {format, uri, description, files, notes}
    split_policy          {mode: "composition"|"source", fractions, salt}
    counts                {read, written, quarantined, quarantined_by_reason: {reason: n}}
    quarantine_files      JSON-lines files (relative paths) listing every rejected record
    job                   {fingerprint, units, records_per_unit, max_shard_bytes, max_shard_samples, config}
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from unimat_dist.representation import Normalizer, UniMatSpec

from unimat_dist.storage import join_uri, read_bytes

SCHEMA_VERSION = 1
FORMAT = "unimat-webdataset"
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val", "test")

REQUIRED_KEYS = (
    "schema_version",
    "format",
    "spec",
    "normalizer",
    "normalizer_fit_split",
    "properties",
    "splits",
    "shards",
    "counts",
)


@dataclass(frozen=True)
class ShardInfo:
    path: str  # relative to the manifest's directory
    split: str
    samples: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    uri: str  # of manifest.json
    schema_version: int
    spec: UniMatSpec
    normalizer: dict[str, Any]
    properties: tuple[str, ...]
    split_counts: dict[str, int]
    shards: tuple[ShardInfo, ...]
    raw: dict[str, Any]

    @property
    def root(self) -> str:
        return self.uri.rsplit("/", 1)[0]

    def shards_of(self, split: str) -> list[ShardInfo]:
        if split not in self.split_counts:
            raise ValueError(f"{self.uri}: no split {split!r}; the manifest has {sorted(self.split_counts)}")
        return [s for s in self.shards if s.split == split]

    def shard_uri(self, shard: ShardInfo) -> str:
        return join_uri(self.root, shard.path)

    def get_normalizer(self) -> Normalizer:
        return Normalizer.from_dict(self.normalizer)


def manifest_uri(uri: str) -> str:
    """The manifest file of a dataset given either the file or its directory."""
    uri = str(uri)
    return uri if uri.endswith(".json") else join_uri(uri, MANIFEST_NAME)


def parse_manifest(data: dict[str, Any], uri: str) -> Manifest:
    """Validate a manifest dict; ``ValueError`` naming the manifest and the bad field."""
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ValueError(f"{uri}: not a UniMat shard manifest (missing {', '.join(missing)})")
    if data["format"] != FORMAT:
        raise ValueError(f"{uri}: format is {data['format']!r}, expected {FORMAT!r}")
    if data["schema_version"] != SCHEMA_VERSION:
        raise ValueError(
            f"{uri}: manifest schema_version {data['schema_version']} is not supported by this reader "
            f"(supports {SCHEMA_VERSION}); re-ingest or upgrade unimat-dist"
        )
    try:
        spec = UniMatSpec.from_dict(data["spec"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{uri}: invalid spec {data['spec']!r}: {exc}") from None
    shards = []
    for i, s in enumerate(data["shards"]):
        try:
            shards.append(ShardInfo(str(s["path"]), str(s["split"]), int(s["samples"]), int(s["bytes"]), str(s["sha256"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{uri}: shards[{i}] is malformed ({exc!r})") from None
    split_counts = {name: int(v["samples"]) for name, v in data["splits"].items()}
    for name, n in split_counts.items():
        total = sum(s.samples for s in shards if s.split == name)
        if total != n:
            raise ValueError(f"{uri}: splits.{name}.samples={n} but its shards hold {total} samples")
    return Manifest(
        uri=uri,
        schema_version=int(data["schema_version"]),
        spec=spec,
        normalizer=dict(data["normalizer"]),
        properties=tuple(data["properties"]),
        split_counts=split_counts,
        shards=tuple(shards),
        raw=data,
    )


def read_manifest(uri: str, storage_options: dict[str, Any] | None = None) -> Manifest:
    """Read and validate a dataset manifest from any supported URI (file://, s3://, gs://, path)."""
    muri = manifest_uri(uri)
    try:
        raw = read_bytes(muri, storage_options)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{muri}: no manifest (the ingest job has not completed there, or the URI is wrong)"
        ) from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{muri}: manifest is not valid JSON ({exc})") from None
    return parse_manifest(data, muri)


def check_spec(manifest: Manifest, spec: UniMatSpec) -> None:
    """Refuse shards encoded with another spec (``ValueError`` listing every difference)."""
    spec.check_compatible(manifest.spec, what=f"the shards of {manifest.uri}")
