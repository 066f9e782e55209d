"""Typed settings of the generation service: the ``args`` of ``deploy.app:build_app`` (Serve config YAML
``applications[].args``, ``serve run deploy.app:build_app checkpoint=...``, or ``unimat serve`` flags).

Unknown keys and bad values are errors naming the key. Deployment-level knobs (replicas, autoscaling,
CPUs/GPUs per replica, ``max_ongoing_requests``) belong to the Serve config's ``deployments`` section;
``build_app`` gives them defaults derived from these settings.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from unimat_dist.config import from_dict


@dataclass
class ServeSettings:
    checkpoint: str = ""  # inference.pt, a checkpoint/run directory, or a file:// s3:// gs:// URI (required)
    # fsspec options for a cloud checkpoint (endpoint_url, key, secret, token, ...)
    storage_options: dict[str, Any] = field(default_factory=dict)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when the replica has a GPU
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU; see docs
    torch_threads: Optional[int] = None  # CPU threads of torch in a replica; null = torch's default
    # where the running denoising loop lives: "process" (a child process of the replica with its own GIL,
    # so HTTP handling and CIF formatting never stall it) or "thread" (in the replica's process)
    engine: Literal["process", "thread"] = "process"

    # batching (see docs/generation.md "Batching policy")
    max_batch_size: int = 32  # requests per @serve.batch call and in the running loop (max_ongoing_requests >= this)
    # seconds a @serve.batch waits for more requests after its first; 0: requests arriving while the device
    # works join the running loop anyway (ContinuousSampler), so waiting only adds latency
    batch_wait_timeout_s: float = 0.0
    max_batch_samples: int = 512  # rows (samples) in the running loop; bounds device memory

    # per-request limits (violations are HTTP 413/422 with a message)
    max_samples_per_request: int = 64  # num_samples upper bound
    max_request_bytes: int = 65536  # request body size limit, bytes
    max_steps: int = 1000  # denoising steps upper bound (also capped by the model's T)
    max_guidance: float = 20.0  # classifier-free guidance weight upper bound
    default_steps_ddim: int = 100  # steps when a DDIM request gives none (capped by T)
    default_format: Literal["cif", "json"] = "cif"

    def __post_init__(self) -> None:
        positive = ("max_batch_size", "max_batch_samples", "max_samples_per_request", "max_request_bytes", "max_steps",
                    "default_steps_ddim")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_wait_timeout_s < 0:
            raise ValueError(f"batch_wait_timeout_s must be >= 0, got {self.batch_wait_timeout_s}")
        if self.max_samples_per_request > self.max_batch_samples:
            raise ValueError(
                f"max_samples_per_request ({self.max_samples_per_request}) must not exceed max_batch_samples "
                f"({self.max_batch_samples}): a request's samples run in one denoising loop"
            )
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be >= 1 or null, got {self.torch_threads}")


def load_settings(args: dict[str, Any] | None) -> ServeSettings:
    """Settings from a plain mapping (strings from ``serve run k=v`` are converted); checkpoint required."""
    data = dict(args or {})
    for key, value in list(data.items()):
        if isinstance(value, str) and key not in ("checkpoint", "device", "precision", "default_format", "engine"):
            import yaml

            data[key] = yaml.safe_load(value)  # "32" -> 32, "{endpoint_url: ...}" -> dict
    settings = from_dict(ServeSettings, data)
    if not settings.checkpoint:
        raise ValueError("the service needs a checkpoint (args: checkpoint=PATH_OR_URI)")
    return settings
