"""Ray glue: the batch job as a Ray Data pipeline over work units with an actor pool holding the model.

One row per unit; ``map_batches`` with a callable class runs ``generate_unit`` in a pool of actors
(``run.actors``, autoscaling up to ``run.max_actors``), each loading the model once and taking
``run.cpus_per_actor`` CPUs and ``run.gpus_per_actor`` GPUs (1 per actor on a GPU cluster). Units
commit themselves from inside the actor, so the driver only collects records for progress and the
manifest; Ray Data retries a unit whose actor dies (the retry rewrites the same shard).

Cluster: ``run.address`` or ``RAY_ADDRESS`` (``ray job submit``) connects to a running cluster;
otherwise a local one is started with ``run.num_cpus`` CPUs, bound to 127.0.0.1, and shut down afterwards.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict
from typing import Any, Iterator

from .config import GenerateBatchConfig
from .unit_worker import JobContext, WorkUnit, generate_unit

log = logging.getLogger("unimat.generate_batch")


class UnitGenerator:
    """Ray Data actor: loads the generator in ``__init__``, generates and commits units in ``__call__``."""

    def __init__(self, ctx: dict[str, Any], model: dict[str, Any], torch_threads: int | None) -> None:
        import torch  # noqa: F401 - imported before the thread policy applies to it

        from unimat_dist.cpu_threads import configure
        from unimat_dist.generation import open_generator

        # The CPUs Ray reserved for this actor (cpus_per_actor), or the explicit torch_threads (warned
        # when more than those).
        configure(torch_threads, what="generate-batch actor")
        self.ctx = JobContext(**ctx)
        self.g = open_generator(model["checkpoint"], model["storage_options"], device=model["device"],
                                precision=model["precision"])

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        records = [generate_unit(self.g, WorkUnit.from_dict(json.loads(u)), self.ctx) for u in batch["unit"]]
        return {"record": [json.dumps(r) for r in records]}


def _start_ray(cfg: GenerateBatchConfig) -> bool:
    """Connect to or start Ray (a new local one bound to 127.0.0.1: ``unimat_dist.ray_local``); True if
    this call started it (and must shut it down)."""
    import ray

    from unimat_dist.ray_local import init_ray

    started = init_ray(cfg.run.address, num_cpus=cfg.run.num_cpus)
    if started:
        log.info("Ray: %s CPUs, %s GPUs", ray.cluster_resources().get("CPU"), ray.cluster_resources().get("GPU", 0))
    return started


def run_on_ray(units: list[WorkUnit], ctx: JobContext, cfg: GenerateBatchConfig) -> Iterator[dict[str, Any]]:
    """Yield unit records as the actors finish them (completion order)."""
    import ray
    import ray.data

    started = _start_ray(cfg)
    run = cfg.run
    try:
        threads = run.torch_threads  # None: each actor uses the CPUs Ray reserved for it (cpu_threads)
        # an actor pool of `actors` (autoscaling up to `max_actors`); `compute=`, not the deprecated `concurrency=`
        if run.max_actors and run.max_actors > run.actors:
            pool = ray.data.ActorPoolStrategy(min_size=run.actors, max_size=run.max_actors)
        else:
            pool = ray.data.ActorPoolStrategy(size=run.actors)
        items = [{"unit": json.dumps(u.to_dict())} for u in units]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(
            UnitGenerator,
            fn_constructor_kwargs={"ctx": asdict(ctx), "model": asdict(cfg.model), "torch_threads": threads},
            batch_size=1,
            batch_format="numpy",
            compute=pool,
            num_cpus=run.cpus_per_actor,
            num_gpus=run.gpus_per_actor,
        )
        for row in ds.iter_rows():
            yield json.loads(row["record"])
    finally:
        if started:
            ray.shutdown()
