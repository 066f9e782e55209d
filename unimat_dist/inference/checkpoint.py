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
    sampling          optional: the sampler settings the release was measured with (``sampling_defaults``)
    autoguidance      optional: {"weight": w, "state_dict": the guide network's weights, "step": its step,
                      "weights": "ema"|"model", "max_t": guide only at t <= max_t (absent: every t)}:
                      an earlier, weaker network of the same run that sampling
                      extrapolates away from (``diffusion/autoguidance.py``; ``unimat model sampling
                      --autoguide-with``)

Paths may be local or fsspec URIs (file://, s3://, gs://, memory://). Every file is written with a
``<file>.sha256`` sidecar and loaded only after its bytes match it, through the weights-only
unpickler (``unimat_dist.safe_io``): an altered file is refused, a file that would run code is never
unpickled. Files from before sidecars existed (the first released checkpoints) load with a warning.
"""
from __future__ import annotations

import datetime as _dt
import io
import json
import os
import re
from typing import Any

import torch

from unimat_dist import safe_io

FORMAT = "unimat-dist/inference"
FORMAT_VERSION = 2  # 2: transformer denoisers, circle positions (version 1 files still load)
INFERENCE_FILE = "inference.pt"
COMPLETE_FILE = "COMPLETE"  # written last into a training checkpoint's step folder: the folder is whole
_STEP_DIR = re.compile(r"step_(\d+)$")
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


SAMPLING_KEYS = ("sampler", "steps", "eta", "noise_scale", "restart", "distinct_compositions")


def sampling_defaults(value: Any, where: str, timesteps: int | None = None) -> dict[str, Any]:
    """The sampler settings a checkpoint carries (``"sampling"``: any of sampler, steps, eta, noise_scale,
    restart [t, steps], distinct_compositions), checked: they come from a file that may not be ours. Requests and command-line flags override them
    field by field; a checkpoint without them samples with the library's defaults (DDIM-100, η 0, λ 1).
    ``timesteps``: the model's T, which bounds steps and the restart's t."""
    from unimat_dist.diffusion.samplers import SAMPLERS, check_restart

    if value is None:
        return {}
    if not isinstance(value, dict) or not set(value) <= set(SAMPLING_KEYS):
        raise ValueError(f"{where}: sampling defaults must be a mapping with keys among {SAMPLING_KEYS}, "
                         f"got {repr(value)[:200]}")
    out: dict[str, Any] = {}
    if "sampler" in value:
        if value["sampler"] not in SAMPLERS:
            raise ValueError(f"{where}: sampler must be one of {SAMPLERS}, got {repr(value['sampler'])[:80]}")
        out["sampler"] = value["sampler"]
    if value.get("steps") is not None:
        if isinstance(value["steps"], bool) or not isinstance(value["steps"], int) or value["steps"] < 1:
            raise ValueError(f"{where}: steps must be an integer >= 1, got {repr(value['steps'])[:80]}")
        if timesteps is not None and value["steps"] > timesteps:
            raise ValueError(f"{where}: steps {value['steps']} exceed the model's T = {timesteps}")
        out["steps"] = value["steps"]
    for key in ("eta", "noise_scale"):
        if key in value:
            v = value[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"{where}: {key} must be a number in [0, 1], got {repr(v)[:80]}")
            out[key] = float(v)
    restart = check_restart(value.get("restart"), timesteps, f"{where} restart")
    if restart is not None:
        out["restart"] = list(restart)
    if "distinct_compositions" in value:  # composition prior: no repeats within one call (generator.condition)
        if not isinstance(value["distinct_compositions"], bool):
            raise ValueError(f"{where}: distinct_compositions must be true or false, "
                             f"got {repr(value['distinct_compositions'])[:80]}")
        out["distinct_compositions"] = value["distinct_compositions"]
    return out


def resolve_sampling(defaults: dict[str, Any], timesteps: int, sampler: str | None = None, steps: int | None = None,
                     eta: float | None = None, noise_scale: float | None = None, restart=None) -> dict[str, Any]:
    """{sampler, steps, eta, noise_scale, restart} to sample with: each given value, else the checkpoint's
    default (``defaults``, as ``sampling_defaults`` returns them), else the library's (DDIM, its default
    steps, η 0, λ 1, no restart). The one place where a request, a flag or a job config meets a
    checkpoint's release settings (the service, ``unimat sample``/``results``, generate-batch).

    The checkpoint's defaults belong to its sampler: asking for another sampler falls back to the library's
    defaults for the other fields (its η would not even apply to DDPM). ``steps`` may stay None (the
    sampler's default). ``restart``: (t, steps), or an empty sequence for none (None takes the default)."""
    from unimat_dist.diffusion.samplers import check_restart

    d = defaults or {}
    if sampler is not None and sampler != d.get("sampler", "ddim"):
        d = {}
    given = {"sampler": sampler, "steps": steps, "eta": eta, "noise_scale": noise_scale, "restart": restart}
    out = {k: v if v is not None else d.get(k) for k, v in given.items()}
    out["sampler"] = out["sampler"] or "ddim"
    out["eta"] = float(out["eta"]) if out["eta"] is not None else 0.0
    out["noise_scale"] = float(out["noise_scale"]) if out["noise_scale"] is not None else 1.0
    out["restart"] = check_restart(out["restart"], int(timesteps))
    return out


AUTOGUIDANCE_KEYS = ("weight", "state_dict", "step", "weights", "max_t")


def autoguidance_entry(value: Any, where: str) -> dict[str, Any] | None:
    """The guide network a checkpoint carries (``"autoguidance"``), checked: a mapping with a weight in
    [0, 10] and a state dict of named tensors (its shapes are checked when it is loaded into the network)."""
    from unimat_dist.diffusion.autoguidance import check_max_t, check_weight

    if value is None:
        return None
    if not isinstance(value, dict) or not set(value) <= set(AUTOGUIDANCE_KEYS) or not {"weight", "state_dict"} <= set(value):
        raise ValueError(f"{where}: autoguidance must be a mapping with weight and state_dict (keys among "
                         f"{AUTOGUIDANCE_KEYS}), got {repr(value)[:200]}")
    sd = value["state_dict"]
    if not isinstance(sd, dict) or not sd or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise ValueError(f"{where}: autoguidance state_dict must map parameter names to tensors")
    step = value.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise ValueError(f"{where}: autoguidance step must be an integer >= 0, got {repr(step)[:80]}")
    weights = value.get("weights", "ema")
    if weights not in ("ema", "model"):
        raise ValueError(f"{where}: autoguidance weights must be 'ema' or 'model', got {repr(weights)[:80]}")
    return {"weight": check_weight(value["weight"], f"{where}: autoguidance weight"), "state_dict": sd,
            "step": step, "weights": weights, "max_t": check_max_t(value.get("max_t"), f"{where}: autoguidance max_t")}


def autoguidance_summary(payload: dict[str, Any], weight: float | None = None) -> dict[str, Any] | None:
    """What a client needs to know of a checkpoint's autoguidance (no weights): None when it has none or
    ``weight`` (the weight in use) is 0."""
    entry = payload.get("autoguidance")
    if entry is None:
        return None
    w = entry["weight"] if weight is None else weight
    if w == 0:
        return None
    return {"weight": w, "guide_step": entry.get("step"), "guide_weights": entry.get("weights", "ema"),
            "max_t": entry.get("max_t")}


def save_torch(obj: Any, uri: str, *, sidecar: bool = True) -> str:
    """torch.save to a local path (atomically, via a temporary file) or an fsspec URI; returns the sha256
    of the bytes written. With ``sidecar`` the digest also goes to ``<file>.sha256``; without, the caller
    records it (training step directories keep their digests in ``COMPLETE``)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    if sidecar:
        return safe_io.write_with_sidecar(uri, data)
    safe_io.write_file(uri, data)
    return safe_io.sha256_bytes(data)


def recorded_sha256(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[str | None, bool]:
    """(sha256 recorded for a checkpoint file or None, whether one must exist).

    Looked up in the file's ``.sha256`` sidecar, then in the ``COMPLETE`` record of a training step
    directory it sits in. A step directory (``COMPLETE`` with digests) or a distributed checkpoint
    (``meta.json`` with ``"checksums"``) written by this version requires a digest for its files, so
    deleting a sidecar cannot turn the check into a warning.
    """
    side = safe_io.read_file(uri + safe_io.SIDECAR_SUFFIX, storage_options)
    if side is not None:
        return safe_io.parse_sidecar(side.decode("utf-8", "replace"), uri + safe_io.SIDECAR_SUFFIX), True
    folder, _, name = uri.rstrip("/").rpartition("/")
    if not folder:
        folder, name = os.path.dirname(os.path.abspath(uri)), os.path.basename(uri)
    for record in ("COMPLETE", "meta.json"):
        raw = safe_io.read_file(f"{folder}/{record}", storage_options)
        try:
            data = json.loads(raw) if raw is not None else None
        except ValueError:
            data = None
        if isinstance(data, dict) and data.get("checksums"):
            digest = data.get("sha256", {}).get(name) if isinstance(data.get("sha256"), dict) else None
            return (safe_io.parse_sidecar(digest, f"{folder}/{record}") if digest else None), True
    return None, False


def load_torch(uri: str, map_location: str | torch.device = "cpu", storage_options: dict[str, Any] | None = None) -> Any:
    """torch.load from a local path or an fsspec URI, never running code from the file: the bytes are
    checked against the recorded sha256 (``recorded_sha256``; none recorded for a file from before
    checksums: a warning), then unpickled with ``weights_only=True``. Raises ``IntegrityError`` or
    ``UnsafeFileError`` (both ``ValueError``) naming the file."""
    data = safe_io.read_file(uri, storage_options)
    if data is None:
        raise FileNotFoundError(f"checkpoint not found: {uri}")
    expected, required = recorded_sha256(uri, storage_options)
    safe_io.check_digest(data, expected, uri, required=required)
    return safe_io.torch_loads(data, uri, map_location)


def resolve_inference_path(uri: str, storage_options: dict[str, Any] | None = None) -> str:
    """A checkpoint file, or a directory holding one: a step directory, a checkpoints directory or a run
    directory (the newest complete step wins); a bare released name (``perov5_transformer_cpu``) is the
    released checkpoint of that name (``unimat_dist.bundled``). ``storage_options``: see ``unimat_dist.storage``."""
    from unimat_dist.bundled import released_checkpoints, resolve_released
    from unimat_dist.storage import filesystem

    uri = resolve_released(uri)
    fs, path = filesystem(uri, storage_options)
    if fs.isfile(path):
        return uri
    if not fs.isdir(path):
        names = ", ".join(released_checkpoints()) or "none"
        raise FileNotFoundError(f"no checkpoint at {uri} (released checkpoints by name: {names})")
    base = uri.rstrip("/")
    if fs.isfile(f"{path.rstrip('/')}/{INFERENCE_FILE}"):
        return f"{base}/{INFERENCE_FILE}"
    for candidate in (base, f"{base}/checkpoints"):
        steps = complete_steps(candidate, storage_options)
        latest = step_folder(candidate, steps[-1]) if steps else None
        if latest is not None and fs.isfile(filesystem(f"{latest}/{INFERENCE_FILE}", storage_options)[1]):
            return f"{latest}/{INFERENCE_FILE}"
    raise FileNotFoundError(f"no {INFERENCE_FILE} in {uri} or in a checkpoint below it")


def step_name(step: int) -> str:
    """The name of a training checkpoint's step folder (``step_00001000``)."""
    return f"step_{step:08d}"


def step_folder(directory: str, step: int) -> str:
    """The folder of a training checkpoint's step (``<directory>/step_00001000``)."""
    return f"{directory.rstrip('/')}/{step_name(step)}"


def complete_steps(directory: str, storage_options: dict[str, Any] | None = None) -> list[int]:
    """Steps of the ``step_NNNNNNNN`` folders under ``directory`` (path or fsspec URI) that hold the
    ``COMPLETE`` marker a training checkpoint writes last, ascending (``training/checkpoint.py``)."""
    from unimat_dist.storage import filesystem

    fs, root = filesystem(directory.rstrip("/"), storage_options)
    if not fs.isdir(root):
        return []
    out = []
    for entry in fs.ls(root, detail=False):
        m = _STEP_DIR.search(entry.rstrip("/"))
        if m and fs.exists(f"{entry.rstrip('/')}/{COMPLETE_FILE}"):
            out.append(int(m.group(1)))
    return sorted(out)


def save_inference_checkpoint(payload: dict[str, Any], uri: str, *, sidecar: bool = True) -> str:
    """Write an inference checkpoint; returns its sha256 (also in ``<uri>.sha256`` with ``sidecar``)."""
    return save_torch(payload, uri, sidecar=sidecar)


def load_inference_checkpoint(uri: str, map_location: str | torch.device = "cpu",
                              storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load and validate an inference checkpoint (file, directory or fsspec URI; see ``resolve_inference_path``)."""
    path = resolve_inference_path(uri, storage_options)
    payload = load_torch(path, map_location, storage_options)
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
    T = payload["diffusion"].get("timesteps") if isinstance(payload["diffusion"], dict) else None
    payload["sampling"] = sampling_defaults(payload.get("sampling"), f"{path}: sampling",
                                            T if isinstance(T, int) else None)
    payload["autoguidance"] = autoguidance_entry(payload.get("autoguidance"), path)
    payload["path"] = path
    return payload


def build_diffusion(payload: dict[str, Any], device: str | torch.device = "cpu", autoguidance: float | None = None):
    """The ``GaussianDiffusion`` (with its denoiser's weights loaded) described by a checkpoint payload.

    ``autoguidance``: the weight of the checkpoint's guide network (None: the checkpoint's own weight;
    0: sample without it, at the cost of one forward per step)."""
    from unimat_dist.diffusion import GaussianDiffusion
    from unimat_dist.diffusion.autoguidance import AutoGuidedDenoiser, check_weight
    from unimat_dist.model import denoiser_from_kwargs
    from unimat_dist.representation import UniMatSpec

    where = payload.get("path", "checkpoint")
    spec = UniMatSpec.from_dict(payload["spec"])
    net = denoiser_from_kwargs(payload["model"])
    net.load_state_dict(payload["state_dict"])
    entry = payload.get("autoguidance")
    weight = entry["weight"] if entry is not None else 0.0
    if autoguidance is not None:
        weight = check_weight(autoguidance, "autoguidance")
        if weight > 0 and entry is None:
            raise ValueError(f"{where}: autoguidance {weight:g} asked for, but the checkpoint carries no guide "
                             "network (add one with `unimat model sampling --autoguide-with`)")
    if weight > 0:
        guide = denoiser_from_kwargs(payload["model"])
        try:
            guide.load_state_dict(entry["state_dict"])
        except RuntimeError as e:
            raise ValueError(f"{where}: the autoguidance network does not fit the model: {str(e)[:300]}") from None
        net = AutoGuidedDenoiser(net, guide, weight, entry.get("max_t"))
    diffusion = GaussianDiffusion(net, spec.allowed_cells, **payload["diffusion"])
    return diffusion.to(device).eval()
