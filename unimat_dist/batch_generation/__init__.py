"""Offline batch candidate generation: a resumable Ray Data job that turns a request list (CSV of
compositions x samples per composition, an inline list, or an unconditional count) into CIF/extxyz
shards plus a manifest on file://, s3:// or gs://.

    unimat generate-batch --config cluster/jobs/generate_tiny_cpu.yaml
    from unimat_dist.batch_generation import load_batch_config, run_generate_batch

``config.py`` (typed YAML), ``requests.py`` (request list, per-request seeds), ``unit_worker.py`` (one
unit: sample, write shard, commit record), ``job.py`` (plan, resume, manifest), ``ray_pool.py`` (the
Ray Data actor pool), ``shards.py`` and ``reader.py`` (file formats, reading results back).
"""
from .config import GenerateBatchConfig
from .job import BatchSummary, load_batch_config, run_generate_batch
from .reader import iter_generated, read_generated_manifest, read_unit_records
from .requests import BatchRequest, plan_requests, request_seed

__all__ = [
    "BatchRequest",
    "BatchSummary",
    "GenerateBatchConfig",
    "iter_generated",
    "load_batch_config",
    "plan_requests",
    "read_generated_manifest",
    "read_unit_records",
    "request_seed",
    "run_generate_batch",
]
