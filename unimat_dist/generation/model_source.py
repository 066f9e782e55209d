"""Open a generator from a checkpoint location, with explicit storage options for cloud URIs.

``unimat_dist.sampling.load_generator`` reaches s3:// and gs:// through fsspec's defaults (endpoint and
credentials from the environment: ``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``, ...,
``STORAGE_EMULATOR_HOST``). A service or job configured with ``storage_options`` (an emulator
endpoint, keys) installs them as fsspec's per-protocol defaults first (``fsspec.config.conf``), which
every filesystem instance the loader creates in this process then uses. Serve replicas and Ray Data
actors are dedicated processes, so the process-wide default is the intended scope.
"""
from __future__ import annotations

from typing import Any


def install_storage_options(uri: str, storage_options: dict[str, Any] | None) -> None:
    """Make ``storage_options`` (merged with the environment, see ``unimat_dist.data.storage``) the
    defaults of ``uri``'s protocol for this process."""
    from unimat_dist.data.storage import resolve_storage_options, split_uri

    scheme, _ = split_uri(uri)
    if scheme == "file" or not storage_options:
        return
    import fsspec

    opts = resolve_storage_options(scheme, storage_options)
    protocols = {"s3": ("s3", "s3a"), "gs": ("gs", "gcs")}.get(scheme, (scheme,))
    for proto in protocols:
        fsspec.config.conf.setdefault(proto, {}).update(opts)


def open_generator(
    checkpoint: str,
    storage_options: dict[str, Any] | None = None,
    device: str | None = None,
    precision: str = "auto",
):
    """``load_generator`` for a local path, ``file://`` URI or a cloud URI reached with ``storage_options``."""
    from unimat_dist.sampling import load_generator

    if not checkpoint:
        raise ValueError("a checkpoint is required (inference.pt, a checkpoint/run directory, or a URI)")
    install_storage_options(checkpoint, storage_options)
    if checkpoint.startswith("file://"):
        checkpoint = checkpoint[len("file://"):]
    return load_generator(checkpoint, device=None if device in (None, "auto") else device, precision=precision)


def model_info(g) -> dict[str, Any]:
    """What a client needs to know about a loaded generator (served as ``GET /v1/model``)."""
    spec = g.spec
    denoiser = g.diffusion.denoiser
    return {
        "checkpoint": g.meta.get("path"),
        "step": g.meta.get("step"),
        "weights": g.meta.get("weights"),
        "created": g.meta.get("created"),
        "unimat_dist_version": g.meta.get("unimat_dist_version"),
        "parameters": int(sum(p.numel() for p in denoiser.parameters())),
        "device": str(g.device),
        "precision": g.precision,
        "timesteps": int(g.diffusion.timesteps),
        "spec": {
            "max_atoms_per_element": spec.L,
            "grid": [spec.H, spec.W],
            "coords": spec.coords,
            "lattice_dim": spec.lattice_dim,
            "elements": list(spec.elements) if spec.elements else None,  # None: the full periodic table
            "description": spec.describe(),
        },
        "properties": list(g.property_names),
        "samplers": ["ddim", "ddpm"],
    }
