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
from unimat_dist.diffusion.samplers import DEFAULT_DDIM_STEPS


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
    max_batch_size: int = 32  # requests in the running loop at once (max_ongoing_requests >= this)
    max_batch_samples: int = 512  # rows (samples) in the running loop; bounds device memory

    # per-request limits (violations are HTTP 408/413/422 with a message)
    max_samples_per_request: int = 64  # num_samples upper bound
    max_request_bytes: int = 65536  # request body size limit, bytes
    # seconds a request's whole body may take to arrive once the replica has taken it: Serve's proxy hands a
    # request to a replica (one of its max_ongoing_requests slots) when the headers arrive, so a client that
    # declares a body and never sends it would hold that slot forever; past this the client gets a 408
    body_timeout_s: float = 10.0
    max_steps: int = 1000  # denoising steps upper bound (also capped by the model's T)
    # compute budget of one request, in sample-steps (num_samples x steps, one network evaluation of one row
    # each): 64 x 100 = the largest request at the default DDIM steps. The limits above alone allow 64 x 1000
    # DDPM steps (~285 s of CPU on 2 cores for the released Perov-5 model); over the budget -> 422
    max_sample_steps: int = 6400
    # property targets must lie within mean +- max_property_sigma x std of the model's training data (the
    # model's own standardisation, reported per property by GET /v1/model); far outside it the standardised
    # value overflows float32 and the samples are NaN, and already a few sigma out the model extrapolates
    max_property_sigma: float = 10.0
    max_guidance: float = 20.0  # classifier-free guidance weight upper bound
    default_steps_ddim: int = DEFAULT_DDIM_STEPS  # steps when a DDIM request gives none (capped by T)
    default_format: Literal["cif", "json"] = "cif"

    def __post_init__(self) -> None:
        positive = ("max_batch_size", "max_batch_samples", "max_samples_per_request", "max_request_bytes", "max_steps",
                    "default_steps_ddim", "max_sample_steps")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("body_timeout_s", "max_property_sigma"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
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
