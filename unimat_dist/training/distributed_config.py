"""The ``distributed`` section of a training config (used when ``trainer: ray``).

    trainer: ray
    distributed:
      num_workers: 8            # one Ray Train worker per GPU
      min_workers: 4            # elastic: keep training with 4..8 workers
      use_gpu: true
      zero_stage: 3
      precision: bf16
      storage_path: s3://my-bucket/unimat/runs
      max_failures: 3
      metrics_port: 9464
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass
class FailureInjection:
    """Kill one worker process on purpose (tests and fire drills of the fault-tolerance path).

    The worker of rank ``rank`` sends itself SIGKILL right after optimizer step ``step`` (before the
    checkpoint of that step, if any). ``times`` bounds how often this happens over the whole run,
    counted with marker files in the run's storage, so the restarted run does not fail again.
    """

    step: int | None = None  # optimizer step after which to die; null = never
    rank: int = 0  # which worker dies
    times: int = 1  # total number of injected deaths over the run (restarts included)


@dataclass
class DistributedConfig:
    num_workers: int = 2  # Ray Train workers (max when elastic); one per GPU with use_gpu
    min_workers: int | None = None  # elastic: any worker count in [min_workers, num_workers]; null = fixed
    use_gpu: bool = False
    cpus_per_worker: float = 1.0  # CPU cores reserved per worker
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl with GPUs, gloo on CPU
    zero_stage: Literal[0, 1, 2, 3] = 2  # DeepSpeed ZeRO stage (0 = plain data parallel)
    offload_optimizer: Literal["none", "cpu"] = "none"  # ZeRO-Offload of optimizer states (stage >= 1)
    offload_params: Literal["none", "cpu"] = "none"  # ZeRO-Infinity parameter offload (stage 3 only)
    # auto: bf16 on GPU, fp32 on CPU. bf16 = DeepSpeed's torch_autocast (bf16 compute, fp32 master weights).
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    storage_path: str | None = None  # Ray Train run storage (checkpoints): local dir or s3:// gs://; null = <out_dir>/ray
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options (endpoint_url, key, token, ...)
    run_name: str | None = None  # Ray Train run name; the same name + storage resumes that run; null = out_dir's name
    max_failures: int = 2  # worker-group restarts (from the latest checkpoint) before the run fails; -1 = unlimited
    elastic_resize_interval_s: float = 60.0  # how often an elastic run looks for more workers
    ray_address: str | None = None  # existing cluster; null = RAY_ADDRESS or a new local Ray instance
    metrics_port: int | None = None  # Prometheus exporter of rank 0; null = off
    metrics_host: str = "127.0.0.1"  # interface the exporter binds to
    fail_at: FailureInjection = field(default_factory=FailureInjection)

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"distributed.num_workers must be >= 1, got {self.num_workers}")
        if self.min_workers is not None and not 1 <= self.min_workers <= self.num_workers:
            raise ValueError(
                f"distributed.min_workers must be in [1, num_workers={self.num_workers}], got {self.min_workers}"
            )
        if self.offload_params != "none" and self.zero_stage != 3:
            raise ValueError("distributed.offload_params needs zero_stage: 3")
        if self.offload_optimizer != "none" and self.zero_stage == 0:
            raise ValueError("distributed.offload_optimizer needs zero_stage >= 1")
        if not self.use_gpu and self.backend == "nccl":
            raise ValueError("distributed.backend: nccl needs use_gpu: true")

    def worker_counts(self) -> list[int]:
        """Every world size this run may have."""
        lo = self.min_workers or self.num_workers
        return list(range(lo, self.num_workers + 1))


def run_name_of(cfg) -> str:
    """The Ray Train run name of a ``TrainConfig``: ``distributed.run_name``, else ``out_dir``'s last folder."""
    name = cfg.distributed.run_name or Path(cfg.out_dir.rstrip("/")).name or "unimat"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def storage_of(cfg) -> str:
    """Where Ray Train keeps the run's checkpoints: ``distributed.storage_path``, else ``<out_dir>/ray``."""
    d = cfg.distributed
    if d.storage_path:
        return d.storage_path if "://" in d.storage_path else os.path.abspath(d.storage_path)
    if "://" in cfg.out_dir and not cfg.out_dir.startswith("file://"):
        return f"{cfg.out_dir.rstrip('/')}/ray"
    return os.path.abspath(os.path.join(cfg.out_dir.removeprefix("file://"), "ray"))


def batch_plan(cfg) -> list[tuple[int, int, int]]:
    """``(world size, micro-batch, accumulation steps)`` for every world size the run may have (1 for
    ``trainer: local``). ValueError naming the keys when the global batch does not divide."""
    t = cfg.train
    worlds = cfg.distributed.worker_counts() if cfg.trainer == "ray" else [1]
    plan = []
    for world in worlds:
        try:
            micro, accum = t.grad_accum_steps(world)
        except ValueError:
            micro = t.micro_batch_size or t.global_batch_size // world
            what = "distributed.num_workers" if cfg.trainer == "ray" else "world size"
            raise ValueError(
                f"train.global_batch_size: {t.global_batch_size} is not divisible by workers x "
                f"train.micro_batch_size = {world} x {micro} ({what} {world})"
            ) from None
        plan.append((world, micro, accum))
    return plan


def check_manifest(cfg, manifest) -> None:
    """The shard manifest against the config: the encoding spec, both splits and, for ``trainer: ray``, at
    least one training shard per worker. Pure: ``manifest`` is already read. ValueError naming the key."""
    from unimat_dist.training.setup import manifest_spec

    data = cfg.data
    try:
        manifest_spec(data, manifest)
    except ValueError as exc:
        raise ValueError(f"data.manifest: {exc}") from None
    for key, split in (("data.train_split", data.train_split), ("data.val_split", data.val_split)):
        if split not in manifest.split_counts:
            raise ValueError(f"{key}: {manifest.uri} has no split {split!r} (has {sorted(manifest.split_counts)})")
    workers = cfg.distributed.num_workers if cfg.trainer == "ray" else 1
    n_shards = len(manifest.shards_of(data.train_split))
    if n_shards < workers:
        raise ValueError(
            f"data.manifest: {manifest.uri}: the {data.train_split} split has {n_shards} shard(s) for up to "
            f"{workers} workers; every worker needs at least one (re-ingest with smaller shards)"
        )


def check_dataset(cfg) -> list[tuple[str, str]]:
    """Both splits of ``data.dataset`` resolved to files that exist: ``[(split, path)]``. ValueError /
    FileNotFoundError naming the key."""
    from unimat_dist.datasets import resolve_split

    d = cfg.data
    out = []
    for key, split in (("data.train_split", d.train_split), ("data.val_split", d.val_split)):
        try:
            r = resolve_split(d.dataset, split)
        except (ValueError, KeyError, FileNotFoundError) as exc:
            raise ValueError(f"data.dataset: {d.dataset}/{split}: {exc}") from None
        if not Path(r.path).exists():
            raise FileNotFoundError(f"{key}: {d.dataset}/{split}: {r.path} does not exist")
        out.append((split, str(r.path)))
    return out


def check_engine(cfg) -> None:
    """The checks of a ``trainer: ray`` config beyond batch and data: the DeepSpeed config it builds and
    ``distributed.fail_at``. ValueError naming the key."""
    d = cfg.distributed
    from unimat_dist.training.deepspeed_engine import deepspeed_config

    deepspeed_config(cfg, world_size=d.num_workers, device_type="cuda" if d.use_gpu else "cpu")
    if d.fail_at.step is not None and not 0 <= d.fail_at.rank < (d.min_workers or d.num_workers):
        raise ValueError(f"distributed.fail_at.rank {d.fail_at.rank} is not a rank of every worker group")


def check_config(cfg) -> None:
    """Every check of a ``trainer: ray`` config (a ``TrainConfig``) that needs no worker: the global batch on
    every world size, the manifest's spec, splits and shards per worker or the data set's splits, the
    DeepSpeed config, ``fail_at``. Raises ValueError/FileNotFoundError with one clear message that names the
    key. ``unimat train --dry-run`` (``launch/preflight.py``) runs these same checks one by one, with the
    manifest read and the storage probes bounded in time."""
    batch_plan(cfg)
    if cfg.data.manifest:
        from unimat_dist.shards.manifest import read_manifest

        check_manifest(cfg, read_manifest(cfg.data.manifest, cfg.data.storage_options or None))
    else:
        check_dataset(cfg)
    check_engine(cfg)


def _abs_local(path: str | None) -> str | None:
    if path is None or ("://" in path and not path.startswith("file://")):
        return path
    return os.path.abspath(os.path.expanduser(path.removeprefix("file://")))


def with_absolute_paths(cfg):
    """Local paths relative to the driver's working directory made absolute: Ray workers run elsewhere
    (their own working directory, or another node with the same shared file system)."""
    import dataclasses

    data = dataclasses.replace(cfg.data, manifest=_abs_local(cfg.data.manifest), cache_dir=_abs_local(cfg.data.cache_dir))
    dist = cfg.distributed
    if dist.storage_path:
        dist = dataclasses.replace(dist, storage_path=_abs_local(dist.storage_path))
    return dataclasses.replace(cfg, out_dir=_abs_local(cfg.out_dir), checkpoint_dir=_abs_local(cfg.checkpoint_dir),
                               data=data, distributed=dist)
