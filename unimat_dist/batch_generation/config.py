"""Typed configuration of ``unimat generate-batch`` (YAML in ``cluster/jobs/generate_*.yaml``).

Every default states its unit; unknown keys are errors (``unimat_dist.config.load_config``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional


@dataclass
class ModelConfig:
    checkpoint: str = ""  # inference.pt, a checkpoint/run directory, or a file:// s3:// gs:// URI (required)
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options for a cloud checkpoint
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when the actor has a GPU
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU; see docs


@dataclass
class RequestsConfig:
    """Which crystals to generate: one request = one composition (or none) x a number of samples."""

    source: Literal["csv", "list", "unconditional"] = "csv"
    uri: Optional[str] = None  # csv: path or URI of the CSV (gz/bz2 inferred from the name)
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options for a cloud CSV
    composition_column: str = "composition"  # csv: formula per row ("Fe2O3")
    id_column: Optional[str] = None  # csv: unique request id per row; null = "row-<n>" (n = 0-based data row)
    samples_column: Optional[str] = None  # csv: samples per row; null = samples_per_request for every row
    property_columns: list[str] = field(default_factory=list)  # csv: columns used as property targets (raw units)
    compositions: list[str] = field(default_factory=list)  # list: inline formulas, ids "list-<n>"
    limit: Optional[int] = None  # first N requests of the source; null = all
    samples_per_request: int = 100  # samples per composition (the paper: 100); unconditional: per request
    unconditional_samples: int = 0  # unconditional: total crystals, split into requests of samples_per_request
    exact_counts: bool = True  # true: exactly the formula's atom counts; false: its element types only
    properties: dict[str, float] = field(default_factory=dict)  # property targets for every request (raw units)
    guidance: float = 0.0  # classifier-free guidance weight for the properties


@dataclass
class SamplingConfig:
    """Sampler settings. A null field takes the checkpoint's release settings (``unimat model sampling``),
    else the library's default; the job resolves them once, before anything is written, and records the
    resolved values in its manifest and fingerprint."""

    sampler: Optional[Literal["ddim", "ddpm"]] = None  # null: the checkpoint's, else ddim
    steps: Optional[int] = None  # null: the checkpoint's, else 100 for DDIM (capped by T), T for DDPM
    eta: Optional[float] = None  # DDIM stochasticity (0 = deterministic); null: the checkpoint's, else 0
    noise_scale: Optional[float] = None  # multiplies the ancestral noise (< 1: lower temperature); null: ..., else 1
    # [t, steps]: a deterministic pass back from t after the chain; [] none; null: the checkpoint's, else none
    restart: Optional[list[int]] = None
    # a request that draws compositions from the model's prior (unconditional, element types) gets no
    # composition twice while the prior has new ones (model/composition.py: sample_distinct); null: the
    # checkpoint's, else false
    distinct_compositions: Optional[bool] = None
    seed: int = 0  # base seed; a request's seed is derived from it and the request id (layout-independent)
    max_batch_samples: int = 256  # rows per denoising loop (device memory bound); >= the largest request


@dataclass
class OutputConfig:
    uri: str = ""  # output root (file path, file://, s3://, gs://): manifest.json, shards/, _units/
    storage_options: dict[str, Any] = field(default_factory=dict)  # endpoint_url, key, secret, token, ...
    format: Literal["cif", "extxyz"] = "cif"  # cif: one multi-block CIF per shard; extxyz: one extxyz per shard
    requests_per_shard: int = 16  # requests per work unit (one shard + one commit record each)
    # delete the files a previous generate-batch job wrote at uri first (only those: recognised by its _job.json
    # and the names the job writes; any other file stays); refused where no generate-batch job owns uri
    overwrite: bool = False
    allow_nonempty: bool = False  # write into a folder that already holds other files (never touched)
    gallery: bool = True  # write gallery/index.html (static offline gallery) after the manifest; local outputs only
    gallery_limit: int = 10000  # crystals in the gallery (the first ones of the job's table)


@dataclass
class RunConfig:
    executor: Literal["ray", "local"] = "ray"  # local: same units, serially in this process
    address: Optional[str] = None  # Ray address; null = RAY_ADDRESS or a new local cluster
    num_cpus: Optional[int] = None  # CPUs of a new local cluster; null = all
    actors: int = 1  # model-holding actors (Ray Data actor pool size); one per GPU on a GPU cluster
    max_actors: Optional[int] = None  # autoscale the pool between actors and max_actors; null = fixed size
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0  # 1 on a GPU cluster
    torch_threads: Optional[int] = None  # torch CPU threads per actor; null = cpus_per_actor (rounded up)


@dataclass
class GenerateBatchConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    requests: RequestsConfig = field(default_factory=RequestsConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    run: RunConfig = field(default_factory=RunConfig)
