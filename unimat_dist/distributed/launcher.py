"""Driver side of ``trainer: ray``: validate the config, start (or join) Ray, run ``TorchTrainer``, and
collect the final inference checkpoint, metrics and plots.

    unimat train --config cluster/jobs/train_tiny_ray_cpu.yaml                       # local Ray
    ray job submit --working-dir . -- unimat train --config cluster/jobs/train_mp20_ray.yaml   # a cluster

Everything that can be checked before a worker starts is checked here (bad batch/world-size
combinations, missing manifest, spec mismatch between config and shards, unknown data set), so a bad
config fails in seconds with one clear message instead of inside N workers.

Re-running the same config (same ``distributed.run_name`` and ``storage_path``) resumes that run from
its latest checkpoint: Ray Train V2 picks the run up by name.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from unimat_dist.config import config_yaml, to_dict
from unimat_dist.training.config import TrainConfig
from unimat_dist.training.distributed_config import check_config, run_name_of, storage_of, with_absolute_paths
from unimat_dist.training.loop import TrainResult

log = logging.getLogger(__name__)


def run_ray_training(cfg: TrainConfig) -> TrainResult:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from unimat_dist.ray_local import init_ray
    from unimat_dist.storage import pyarrow_filesystem, write_bytes_atomic

    from .worker import train_worker

    check_config(cfg)
    d = cfg.distributed
    cfg = with_absolute_paths(cfg)
    run_name, storage = run_name_of(cfg), storage_of(cfg)
    # the resolved config, as the local trainer saves and prints it (out_dir may be a bucket URI)
    resolved = config_yaml(cfg)
    write_bytes_atomic(f"{cfg.out_dir.rstrip('/')}/config.yaml", resolved.encode(), d.storage_options or None)
    log.info("config:\n%s", resolved)
    init_ray(d.ray_address)  # a new local Ray binds 127.0.0.1 (ray_local)
    pa_fs, pa_path = pyarrow_filesystem(storage, d.storage_options or None)
    if "://" not in storage:
        Path(storage).mkdir(parents=True, exist_ok=True)
    backend = d.backend if d.backend != "auto" else ("nccl" if d.use_gpu else "gloo")
    scaling = ScalingConfig(
        num_workers=(d.min_workers, d.num_workers) if d.min_workers is not None else d.num_workers,
        use_gpu=d.use_gpu,
        resources_per_worker={"CPU": d.cpus_per_worker, **({"GPU": 1} if d.use_gpu else {})},
        elastic_resize_monitor_interval_s=d.elastic_resize_interval_s,
    )
    from unimat_dist.observability.progress import ProgressPrinter, failure_callback

    printer = ProgressPrinter(cfg.train.steps, cfg.train.global_batch_size)
    hub = printer.start()
    payload = {
        "progress": hub,  # rank 0 pushes step/loss/samples-per-s records; this driver prints them
        "config": to_dict(cfg),
        "run_name": run_name,
        "storage_path": storage,
        "storage_options": d.storage_options,
    }
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=payload,
        scaling_config=scaling,
        torch_config=TorchConfig(backend=backend, timeout_s=600),
        run_config=RunConfig(
            name=run_name,
            storage_path=pa_path if "://" in storage else storage,
            storage_filesystem=pa_fs if "://" in storage else None,
            failure_config=FailureConfig(max_failures=d.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=max(cfg.train.keep_checkpoints, 1)),
            callbacks=[failure_callback(hub)],  # tells restarts (a worker failed) from elastic resizes
        ),
    )
    log.info("run=%s storage=%s workers=%s ZeRO-%d backend=%s", run_name, storage,
             scaling.num_workers, d.zero_stage, backend)
    try:
        result = trainer.fit()
    finally:
        printer.close()
    if printer.restarts:
        log.info("run %s: %d worker-group restart(s) by Ray Train's failure handling", run_name, printer.restarts)
    if printer.resizes:
        log.info("run %s: %d elastic resize(s) of the worker group", run_name, printer.resizes)
    if getattr(result, "error", None) is not None:
        raise RuntimeError(f"run {run_name} failed: {result.error}")
    return _collect(cfg, result, run_name)


def _collect(cfg: TrainConfig, result, run_name: str) -> TrainResult:
    """Copy the last checkpoint's inference file and loss curve to ``out_dir``; plot loss and throughput."""
    from unimat_dist.storage import filesystem
    from unimat_dist.inference.checkpoint import INFERENCE_FILE

    from unimat_dist.training import deepspeed_checkpoint as ck
    from unimat_dist.training.plots import plot_metrics

    ret: dict[str, Any] = result.return_value or {}
    out_fs, out_path = filesystem(cfg.out_dir, cfg.distributed.storage_options or None)
    out_fs.makedirs(out_path, exist_ok=True)
    inference_uri = None
    meta: dict[str, Any] = {}
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as ckpt_dir, tempfile.TemporaryDirectory() as tmp:
            meta = ck.read_meta(ckpt_dir)
            for name in (INFERENCE_FILE, ck.METRICS_FILE, ck.META_FILE):
                src = Path(ckpt_dir) / name
                if src.exists():
                    out_fs.put_file(str(src), f"{out_path}/{name}")
            metrics_file = Path(ckpt_dir) / ck.METRICS_FILE
            if metrics_file.exists():
                local_png = Path(tmp) / "loss.png"
                if plot_metrics(metrics_file, local_png, title=run_name):
                    out_fs.put_file(str(local_png), f"{out_path}/loss.png")
        inference_uri = f"{cfg.out_dir.rstrip('/')}/{INFERENCE_FILE}"
    summary = {
        "run_name": run_name,
        "checkpoint": result.checkpoint.path if result.checkpoint is not None else None,
        "inference_checkpoint": inference_uri,
        "steps": ret.get("steps", meta.get("step")),
        "world_size": ret.get("world_size"),
        "resumes": ret.get("resumes"),
        "first_loss": ret.get("first_loss"),
        "last_loss": ret.get("last_loss"),
        "val_loss": ret.get("val_loss"),
    }
    out_fs.pipe_file(f"{out_path}/summary.json", json.dumps(summary, indent=1).encode())
    log.info("run %s done: %s", run_name, summary)
    return TrainResult(
        steps=int(summary["steps"] or 0),
        first_loss=float(ret.get("first_loss", float("nan"))),
        last_loss=float(ret.get("last_loss", float("nan"))),
        val_loss=ret.get("val_loss"),
        checkpoint=summary["checkpoint"],
        inference_checkpoint=inference_uri,
        history=ret.get("history", []),
    )


__all__ = ["run_ray_training"]
