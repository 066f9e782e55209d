"""The per-worker training function that Ray Train runs on every rank (``TorchTrainer(train_worker, ...)``).

Ray has already initialised the process group (gloo on CPU, nccl on GPUs) and set RANK/WORLD_SIZE/
MASTER_ADDR; DeepSpeed reuses it. The function builds the same run as the local trainer
(``prepare_run``), swaps in the DeepSpeed engine and the rank's slice of the data, resumes from
``ray.train.get_checkpoint()`` when Ray restarts the worker group, and runs ``Trainer.fit``.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def train_worker(payload: dict[str, Any]) -> dict[str, Any]:
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from unimat_dist.config import from_dict
    from unimat_dist.training.config import TrainConfig
    from unimat_dist.training.ema import EMA
    from unimat_dist.training.engine import resolve_autocast
    from unimat_dist.training.loop import Trainer
    from unimat_dist.training.setup import build_diffusion, make_train_source, prepare_run

    from . import checkpointing as ck
    from .deepspeed_engine import DeepSpeedEngine, deepspeed_config, resolve_precision
    from .metrics import TrainMetrics
    from .observers import FailureInjection, RankZeroReporting
    from .progress import ProgressReporter
    from .sharded_ema import ShardedEMA

    os.environ.setdefault("PYTHONUNBUFFERED", "1")  # processes this worker starts flush their lines at once
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = from_dict(TrainConfig, payload["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    from unimat_dist.cpu_threads import configure  # Ray's CPUs for this worker; explicit num_threads warned

    configure(cfg.train.num_threads or None, what=f"train worker {rank}", export_env=False)
    d = cfg.distributed

    setup = prepare_run(cfg, device=device, rank=rank)
    train_source, val_data = make_train_source(cfg, setup, rank=rank, world_size=world), setup.val_data

    # Resume point first: the engine must know whether DeepSpeed loads a universal checkpoint. The
    # newest complete checkpoint in the run's storage wins over Ray's registered one (see
    # checkpointing.latest_complete); Ray's is the fallback when storage cannot be listed.
    run_name = payload["run_name"]
    found = ck.latest_complete(payload["storage_path"], run_name, payload.get("storage_options"))
    ckpt_ctx, ckpt_dir, ckpt_tmp = None, None, None
    if found is not None:
        ckpt_dir, ckpt_tmp = ck.local_copy(found[0], payload.get("storage_options"))
    elif (checkpoint := ray.train.get_checkpoint()) is not None:
        ckpt_ctx = checkpoint.as_directory()
        ckpt_dir = ckpt_ctx.__enter__()
    verified = None
    try:
        meta = None
        if ckpt_dir is not None:
            # Everything below (DeepSpeed, ds_to_universal, the loop state) reads this rank's verified
            # private copy, never the shared storage: see checkpointing.verified_copy.
            verified = tempfile.mkdtemp(prefix=f"unimat-verified-r{rank}-")
            meta = ck.verified_copy(ckpt_dir, verified)
        universal = None
        if meta is not None and meta["world_size"] != world:
            out = ck.universal_dir(ckpt_dir)  # keyed by the original checkpoint: shared by the node's ranks
            if ctx.get_local_rank() == 0:
                universal = ck.convert_to_universal(verified, out)
            dist.barrier()
            universal = universal or (str(out), f"{ck.DS_TAG}_universal")

        ds_cfg = deepspeed_config(cfg, world_size=world, device_type=device.type, load_universal=universal is not None)
        engine = DeepSpeedEngine.create(setup.diffusion, ds_cfg, weight_decay=cfg.optim.weight_decay)
        if engine.zero_stage == 3:
            ema = ShardedEMA(engine.module, cfg.optim.ema_decay, rank)
            template = build_diffusion(cfg, setup.spec, len(setup.scaler.names), setup.normalizer).to(device)
        else:
            ema, template = EMA(engine.module, cfg.optim.ema_decay), None

        # This attempt's scratch folder (metrics.jsonl of rank 0); the curve so far comes back from the checkpoint.
        run_dir = Path(tempfile.mkdtemp(prefix=f"unimat-{run_name}-rank{rank}-"))
        marker_fs, marker_dir = _marker_storage(payload)
        amp = torch.bfloat16 if resolve_precision(d.precision, device.type) == "bf16" else None
        metrics = TrainMetrics(d.metrics_port if rank == 0 else None, d.metrics_host, run_name, ray_metrics=rank == 0)
        progress = ProgressReporter(payload.get("progress") if rank == 0 else None, world)
        checkpointer = ck.RayCheckpointer(run_name, (verified, meta, universal) if meta is not None else None)
        trainer = Trainer(
            cfg,
            template=template,
            observers=[RankZeroReporting(metrics, progress, run_name), FailureInjection(d.fail_at, marker_fs, marker_dir)],
            engine=engine,
            ema=ema,
            batcher=setup.batcher,
            train_source=train_source,
            val_data=val_data,
            spec=setup.spec,
            normalizer=setup.normalizer,
            scaler=setup.scaler,
            checkpointer=checkpointer,
            run_dir=run_dir if rank == 0 else None,
            autocast_dtype=amp if amp is not None else resolve_autocast("fp32", device),
            rank=rank,
            world_size=world,
        )
        trainer.resume()  # now: the verified copy is deleted below
    finally:
        if verified is not None:
            shutil.rmtree(verified, ignore_errors=True)
        if ckpt_ctx is not None:
            ckpt_ctx.__exit__(None, None, None)
        if ckpt_tmp is not None:
            shutil.rmtree(ckpt_tmp, ignore_errors=True)

    if rank == 0:
        metrics.started(world_size=world, total_steps=cfg.train.steps, step=trainer.state.step, resumes=checkpointer.resumes)
        progress.started(trainer.state.step, checkpointer.resumes)
        log.info("run=%s rank 0/%d: %s, ZeRO-%d, micro-batch %d x %d accumulation, device %s",
                 run_name, world, setup.spec.describe(), engine.zero_stage, trainer.micro_batch, trainer.accum, device)
    try:
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

