"""Open a generator from a checkpoint location, with explicit storage options for cloud URIs.

``storage_options`` (an emulator endpoint, keys) go with every read of the checkpoint
(``unimat_dist.storage``: explicit options first, then ``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``, ...,
``STORAGE_EMULATOR_HOST``); nothing process-wide is changed.
"""
from __future__ import annotations

from typing import Any


def open_generator(
    checkpoint: str,
    storage_options: dict[str, Any] | None = None,
    device: str | None = None,
    precision: str = "auto",
):
    """``load_generator`` for a local path, ``file://`` URI or a cloud URI reached with ``storage_options``."""
    from unimat_dist.inference import load_generator

    if not checkpoint:
        raise ValueError("a checkpoint is required (inference.pt, a checkpoint/run directory, or a URI)")
    if checkpoint.startswith("file://"):
        checkpoint = checkpoint[len("file://"):]
    return load_generator(checkpoint, device=None if device in (None, "auto") else device, precision=precision,
                          storage_options=storage_options)


def model_info(g) -> dict[str, Any]:
    """What a client needs to know about a loaded generator (served as ``GET /v1/model``)."""
    from unimat_dist.diffusion.autoguidance import main_network

    spec = g.spec
    denoiser = main_network(g.diffusion.denoiser)
    return {
        "checkpoint": g.meta.get("path"),
        "step": g.meta.get("step"),
        "weights": g.meta.get("weights"),
        "created": g.meta.get("created"),
        "unimat_dist_version": g.meta.get("unimat_dist_version"),
        "parameters": int(sum(p.numel() for p in denoiser.parameters())),
        # {weight, guide_step, guide_weights}: each step also runs the earlier network (diffusion/autoguidance.py)
        "autoguidance": g.meta.get("autoguidance"),
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
