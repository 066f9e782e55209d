"""The per-worker training function that Ray Train runs on every rank (``TorchTrainer(train_worker, ...)``).

Ray has already initialised the process group (gloo on CPU, nccl on GPUs) and set RANK/WORLD_SIZE/
MASTER_ADDR; DeepSpeed reuses it. What is Ray's here is what Ray's DeepSpeed example has: the context
(rank, world size, device), the checkpoint to resume (``checkpointing.resume_point``) and the reports
(``checkpointing.RayCheckpointer`` and the rank-0 observers). The ``Trainer`` itself comes from the same
builder as a local run (``training.run.build_trainer``).
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def train_worker(payload: dict[str, Any]) -> dict[str, Any]:
    import ray.train
    import ray.train.torch

    from unimat_dist.config import from_dict
    from unimat_dist.cpu_threads import configure
    from unimat_dist.observability.progress import ProgressReporter
    from unimat_dist.observability.training import RankZeroReporting, TrainMetrics
    from unimat_dist.training.config import TrainConfig
    from unimat_dist.training.run import build_trainer

    from . import checkpointing as ck
    from .observers import FailureInjection

    os.environ.setdefault("PYTHONUNBUFFERED", "1")  # processes this worker starts flush their lines at once
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = from_dict(TrainConfig, payload["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    configure(cfg.train.num_threads or None, what=f"train worker {rank}", export_env=False)  # Ray's CPUs for this worker
    run_name, d = payload["run_name"], cfg.distributed
    metrics = TrainMetrics(d.metrics_port if rank == 0 else None, d.metrics_host, run_name, ray_metrics=rank == 0)
    progress = ProgressReporter(payload.get("progress") if rank == 0 else None, world)
    observers = [RankZeroReporting(metrics, progress, run_name), FailureInjection(d.fail_at, *_marker_storage(payload))]
    try:
        with ck.resume_point(payload["storage_path"], run_name, payload.get("storage_options"), rank=rank,
                             world_size=world, local_rank=ctx.get_local_rank(),
                             ray_checkpoint=ray.train.get_checkpoint()) as source:
            checkpointer = ck.RayCheckpointer(run_name, source)
            trainer = build_trainer(
                cfg,
                device=ray.train.torch.get_device(),
                checkpointer=checkpointer,
                # this attempt's scratch folder for rank 0's metrics.jsonl; the curve so far comes back from the checkpoint
                run_dir=Path(tempfile.mkdtemp(prefix=f"unimat-{run_name}-rank{rank}-")) if rank == 0 else None,
                rank=rank,
                world_size=world,
                observers=observers,
                load_universal=source is not None and source[2] is not None,
            )
            trainer.resume()  # inside the with: the verified copy is deleted on leaving it
        if rank == 0:
            metrics.started(world_size=world, total_steps=cfg.train.steps, step=trainer.state.step,
                            resumes=checkpointer.resumes)
            progress.started(trainer.state.step, checkpointer.resumes)
        result = trainer.fit()
    finally:
        metrics.close()
    return {
        "steps": result.steps,
        "first_loss": result.first_loss,
        "last_loss": result.last_loss,
        "val_loss": result.val_loss,
        "world_size": world,
        "resumes": checkpointer.resumes,
        "history": result.history,
    }


def _marker_storage(payload: dict[str, Any]):
    """(fsspec filesystem, folder) for fault-injection markers inside the run's storage."""
    from unimat_dist.storage import filesystem

    root = payload["storage_path"].rstrip("/")
    fs, path = filesystem(root, payload.get("storage_options") or None)
    return fs, f"{path}/{payload['run_name']}/fault_injection"

