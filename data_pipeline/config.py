"""Typed configuration of ``unimat ingest`` (YAML in ``cluster/jobs/ingest_*.yaml``, or CLI flags).

Every default states its unit; unknown keys are errors (``unimat_dist.config.load_config``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional


@dataclass
class SourceConfig:
    format: Literal["cdvae-csv", "gnome", "structure-dir"] = "cdvae-csv"
    uri: Optional[str] = None  # file/folder/zip path or file://, s3://, gs:// URI
    dataset: Optional[str] = None  # cdvae-csv only: registry name (perov_5, carbon_24, mp_20, ...)
    id_column: str = "material_id"  # cdvae-csv: column holding the record id
    limit: Optional[int] = None  # records per source file (CSV rows, or files of a folder); null = all
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options for a cloud source
    # structure-dir (local folder): follow symlinks that point outside the source folder; false = skip and
    # count them in the summary (a link could otherwise pull any readable file into the data set)
    follow_links: bool = False


@dataclass
class SpecConfig:
    max_atoms_per_element: Optional[int] = None  # L; null = the registry value of source.dataset
    coords: Literal["fractional", "cartesian"] = "fractional"
    elements: Optional[list[str]] = None  # reduced chemical system; null = full table (or registry's)


@dataclass
class SplitConfig:
    mode: Literal["auto", "composition", "source"] = "auto"  # auto: source for CDVAE split files, else composition
    fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.9, "val": 0.05, "test": 0.05})
    salt: str = "unimat-split-v1"  # changing it reshuffles which compositions go where


@dataclass
class OutputConfig:
    uri: str = ""  # dataset root: manifest.json, <split>/*.tar, quarantine/, _units/
    storage_options: dict[str, Any] = field(default_factory=dict)  # endpoint_url, key, secret, token, ...
    records_per_unit: int = 4096  # input records per work unit (task); each unit writes >= 1 shard per split
    max_shard_bytes: int = 256 * 1024 * 1024  # bytes; a unit starts a new shard before exceeding it
    max_shard_samples: Optional[int] = None  # samples per shard; null = no limit besides records_per_unit
    # delete the files a previous ingest job wrote at uri first (only those: recognised by its _job.json and
    # the names the job writes; any other file stays); refused where no ingest job owns uri
    overwrite: bool = False
    allow_nonempty: bool = False  # write into a folder that already holds other files (never touched)


@dataclass
class ValidateConfig:
    cif_parser: Literal["fast", "pymatgen"] = "fast"  # fast: P1 reader with pymatgen fallback
    min_distance: float = 0.5  # Angstrom; closer atom pairs are quarantined (0 disables)
    max_atoms: Optional[int] = None  # atoms per structure; null = no limit besides L per element
    # bytes (decompressed) of one structure file, archive member or CSV row; larger ones are quarantined as
    # too_large after reading at most this much (streamed), so memory never depends on what a file claims
    max_record_bytes: int = 16 * 1024 * 1024
    lattice_length_range: list[float] = field(default_factory=lambda: [1.0, 200.0])  # Angstrom, inclusive
    lattice_angle_range: list[float] = field(default_factory=lambda: [1.0, 179.0])  # degrees, inclusive
    volume_per_atom_range: list[float] = field(default_factory=lambda: [1.0, 500.0])  # Angstrom^3, inclusive


@dataclass
class RunConfig:
    executor: Literal["ray", "local"] = "ray"  # local: same work units, serially in this process
    address: Optional[str] = None  # Ray address; null = RAY_ADDRESS or a new local cluster
    num_cpus: Optional[int] = None  # CPUs of a new local cluster; null = all
    scratch_dir: Optional[str] = None  # local folder for shards being built; null = system temp


@dataclass
class IngestConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    spec: SpecConfig = field(default_factory=SpecConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    run: RunConfig = field(default_factory=RunConfig)
