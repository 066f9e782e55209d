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

from dataclasses import dataclass, field
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
