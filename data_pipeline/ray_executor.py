"""Ray glue: run work units as a Ray Data job (one row per unit, one task per row).

Each row carries a serialised ``WorkUnit``; ``Dataset.map`` runs ``process_unit`` on it in a Ray task
(1 CPU each, so a cluster of N cores runs N units at once) and returns the unit record. Ray Data
streams rows back as units finish, so the driver logs progress while the job runs, and retries a
task whose worker dies (Ray Data's default for tasks). The unit is the unit of determinism: whatever
the scheduling, a unit writes the same shards.

Cluster: ``run.address`` or ``RAY_ADDRESS`` (set by ``ray job submit``) connects to a running cluster;
otherwise a local one is started with ``run.num_cpus`` CPUs, bound to 127.0.0.1, and shut down afterwards.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Iterator

from .config import RunConfig
from .readers import WorkUnit
from .unit_worker import JobContext, process_unit

log = logging.getLogger("unimat.ingest")


def _start_ray(run: RunConfig) -> bool:
    """Connect to or start Ray (a new local one bound to 127.0.0.1: ``unimat_dist.ray_local``); True if
    this call started it (and must shut it down)."""
    import ray

    from unimat_dist.ray_local import init_ray

    started = init_ray(run.address, num_cpus=run.num_cpus)
    if started:
        log.info("Ray: %s CPUs available", ray.cluster_resources().get("CPU"))
    return started


def run_on_ray(units: list[WorkUnit], ctx: JobContext, run: RunConfig) -> Iterator[dict[str, Any]]:
    """Yield unit records as their Ray tasks finish (in completion order)."""
    import ray
    import ray.data

    started = _start_ray(run)
    try:
        def task(row: dict[str, Any]) -> dict[str, Any]:
            record = process_unit(WorkUnit.from_dict(json.loads(row["unit"])), ctx)
            return {"record": json.dumps(record)}

        items = [{"unit": json.dumps(u.to_dict())} for u in units]
        ds = ray.data.from_items(items, override_num_blocks=len(items)).map(task, num_cpus=1)
        for row in ds.iter_rows():
            yield json.loads(row["record"])
    finally:
        if started:
            ray.shutdown()
