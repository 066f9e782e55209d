"""The inference checkpoint: one file that rebuilds the generator with no DeepSpeed, no Ray, no config files.

It is ``torch.save`` of a plain dict (loadable with ``torch.load(..., weights_only=True)``)::

    format            "unimat-dist/inference"
    format_version    1
    model             the denoiser's init_kwargs(): UniMatUNet {"unet": UNetConfig dict, "shape": [L, H, W],
                      "lattice_dim": D, "num_properties": P}, or CrystalTransformer {"arch": "transformer",
                      "transformer": TransformerConfig dict, shape, grid, lattice statistics, ...}
    diffusion         GaussianDiffusion.config(): {"timesteps", "schedule", "loss_weighting", "lattice_loss_weight",
                      "positions", "composition_loss_weight"} (version 1 files lack the last two: linear, 0.01)
    state_dict        denoiser weights (float32; the EMA weights unless ``weights`` says "model")
    weights           "ema" | "model"
    spec              UniMatSpec.to_dict()
    normalizer        Normalizer.to_dict()
    properties        PropertyScaler.to_dict(): {"names": [...], "mean": [...], "std": [...]}
    train_config      the training config tree as plain data
    step              optimizer steps trained
    unimat_dist_version, created (ISO time)

Paths may be local or fsspec URIs (file://, s3://, gs://, memory://).
"""
from __future__ import annotations

import datetime as _dt
import io
import os
from typing import Any

import torch

FORMAT = "unimat-dist/inference"
FORMAT_VERSION = 2  # 2: transformer denoisers, circle positions (version 1 files still load)
INFERENCE_FILE = "inference.pt"
_REQUIRED = ("model", "diffusion", "state_dict", "spec", "normalizer", "properties")


def inference_payload(
    denoiser,
    diffusion_config: dict[str, Any],
    spec,
    normalizer,
    scaler,
    *,
    train_config: dict[str, Any] | None = None,
    step: int = 0,
    weights: str = "ema",
) -> dict[str, Any]:
    """Assemble the checkpoint dict from a denoiser (``UniMatUNet``) and the data-side transforms."""
    from unimat_dist import __version__

    return {
        "format": FORMAT,
        # a U-Net checkpoint stays readable by version-1 readers
        "format_version": FORMAT_VERSION if denoiser.init_kwargs().get("arch") == "transformer" else 1,
        "model": denoiser.init_kwargs(),
        "diffusion": dict(diffusion_config),
        "state_dict": {k: v.detach().float().cpu().clone() for k, v in denoiser.state_dict().items()},
        "weights": weights,
        "spec": spec.to_dict(),
        "normalizer": normalizer.to_dict(),
        "properties": scaler.to_dict(),
        "train_config": train_config or {},
        "step": int(step),
        "unimat_dist_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _local(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def save_torch(obj: Any, uri: str) -> None:
    """torch.save to a local path (atomically, via a temporary file) or an fsspec URI."""
    if _is_local(uri):
        path = _local(uri)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        torch.save(obj, tmp)
        os.replace(tmp, path)
        return
    import fsspec

    buf = io.BytesIO()
    torch.save(obj, buf)
    with fsspec.open(uri, "wb") as fh:
        fh.write(buf.getvalue())


def load_torch(uri: str, map_location: str | torch.device = "cpu") -> Any:
    """torch.load (weights_only) from a local path or an fsspec URI."""
    if _is_local(uri):
        if not os.path.exists(_local(uri)):
            raise FileNotFoundError(f"checkpoint not found: {uri}")
        return torch.load(_local(uri), map_location=map_location, weights_only=True)
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {uri}")
    with fs.open(path, "rb") as fh:
        data = fh.read()
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)


def resolve_inference_path(uri: str) -> str:
    """A checkpoint file, or a directory holding one: a step directory, a checkpoints directory or a run
    directory (the newest complete step wins)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    if fs.isfile(path):
        return uri
    if not fs.isdir(path):
        raise FileNotFoundError(f"no checkpoint at {uri}")
    base = uri.rstrip("/")
    if fs.isfile(f"{path.rstrip('/')}/{INFERENCE_FILE}"):
        return f"{base}/{INFERENCE_FILE}"
    from unimat_dist.training.checkpoint import CheckpointManager

    for candidate in (base, f"{base}/checkpoints"):
        latest = CheckpointManager(candidate).latest()
        if latest is not None and fs.isfile(fsspec.core.url_to_fs(f"{latest}/{INFERENCE_FILE}")[1]):
            return f"{latest}/{INFERENCE_FILE}"
    raise FileNotFoundError(f"no {INFERENCE_FILE} in {uri} or in a checkpoint below it")


def save_inference_checkpoint(payload: dict[str, Any], uri: str) -> None:
    save_torch(payload, uri)


def load_inference_checkpoint(uri: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate an inference checkpoint (file, directory or fsspec URI; see ``resolve_inference_path``)."""
    path = resolve_inference_path(uri)
    payload = load_torch(path, map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a unimat-dist inference checkpoint (format {payload.get('format')!r})"
                         if isinstance(payload, dict) else f"{path} is not a unimat-dist inference checkpoint")
    if int(payload.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {payload['format_version']}; this unimat-dist reads up to {FORMAT_VERSION}"
        )
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise ValueError(f"{path} lacks key(s) {missing}")
    payload["path"] = path
    return payload


def build_diffusion(payload: dict[str, Any], device: str | torch.device = "cpu"):
    """The ``GaussianDiffusion`` (with its denoiser's weights loaded) described by a checkpoint payload."""
    from unimat_dist.diffusion import GaussianDiffusion
    from unimat_dist.model import denoiser_from_kwargs
    from unimat_dist.representation import UniMatSpec

    spec = UniMatSpec.from_dict(payload["spec"])
    net = denoiser_from_kwargs(payload["model"])
    net.load_state_dict(payload["state_dict"])
    diffusion = GaussianDiffusion(net, spec.allowed_cells, **payload["diffusion"])
    return diffusion.to(device).eval()
