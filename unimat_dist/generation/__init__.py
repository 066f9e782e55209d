"""Generation at scale, without Ray: the shared core of the online service (``deploy/``) and the offline
batch job (``unimat_dist.batch_generation``).

    from unimat_dist.generation import GenerationJob, open_generator, prepare_job, run_jobs
    g = open_generator("s3://bucket/run/inference.pt", storage_options={"endpoint_url": ...})
    jobs = [prepare_job(g, GenerationJob(4, SampleRequest("Fe2O3"), "ddim", 50, seed=1)),
            prepare_job(g, GenerationJob(2, SampleRequest(), "ddim", 50, seed=2))]
    structures = run_jobs(g, jobs, max_rows=256)      # one denoising loop for both, per-job seeds

``jobs.py`` (grouping, packing, seeds), ``records.py`` (CIF/JSON, validity flags),
``model_source.py`` (checkpoint from a path or cloud URI, model info).
"""
from .jobs import SEED_MAX, GenerationJob, LoopStats, plan_loops, prepare_job, resolve_steps, run_jobs
from .model_source import model_info, open_generator
from .records import (
    FLAGS,
    element_counts,
    matches_request,
    structure_to_cif,
    structure_to_json,
    summarize_flags,
    validity_flags,
)

__all__ = [
    "FLAGS",
    "SEED_MAX",
    "GenerationJob",
    "LoopStats",
    "element_counts",
    "matches_request",
    "model_info",
    "open_generator",
    "plan_loops",
    "prepare_job",
    "resolve_steps",
    "run_jobs",
    "structure_to_cif",
    "structure_to_json",
    "summarize_flags",
    "validity_flags",
]
