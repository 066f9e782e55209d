"""Training checkpoints: a directory per step holding the state of every stateful part, plus the inference file.

    <checkpoint_dir>/step_00001000/train_state.pt   {part name: part.state_dict()} (torch.save, weights_only-safe)
    <checkpoint_dir>/step_00001000/inference.pt     the inference checkpoint (unimat_dist.inference.checkpoint)
    <checkpoint_dir>/step_00001000/COMPLETE         written last: a directory without it is ignored;
                                                    JSON {"step", "checksums": true, "sha256": {file: digest}}

Parts are anything with ``state_dict``/``load_state_dict`` (torchtitan style): model+optimizer
(the engine), EMA, train state, data position, batcher RNG, global RNGs. The directory may be a local
path or an fsspec URI. The distributed trainer replaces the engine part with DeepSpeed's own
checkpoint files inside the same step directory.

Integrity: ``COMPLETE`` records the sha256 of both files; loading refuses a file whose bytes differ
(``unimat_dist.safe_io.IntegrityError``) and unpickles only tensors and plain data (``weights_only``;
``UnsafeFileError`` otherwise). Step directories from before this (``COMPLETE`` holding just the step)
still load, with a warning that they are unverified.
"""
from __future__ import annotations

import json
import logging
import random
from typing import Any, Protocol

import numpy as np
import torch

from unimat_dist.inference.checkpoint import (
    COMPLETE_FILE, INFERENCE_FILE, complete_steps, load_torch, save_inference_checkpoint, save_torch, step_folder,
)

log = logging.getLogger(__name__)
STATE_FILE = "train_state.pt"


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class RNGState:
    """The global RNGs (Python, NumPy, torch CPU, CUDA) as a checkpoint part."""

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)},
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        random.setstate(_as_tuple(state["python"]))
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


class CheckpointManager:
    def __init__(self, directory: str, keep: int = 3) -> None:
        from unimat_dist.storage import filesystem

        self.directory = directory.rstrip("/")
        self.keep = keep
        self.fs, self.root = filesystem(self.directory)

    def step_dir(self, step: int) -> str:
        return step_folder(self.directory, step)

    def steps(self) -> list[int]:
        """Steps with a complete checkpoint, ascending."""
        return complete_steps(self.directory)

    def latest(self) -> str | None:
        steps = self.steps()
        return self.step_dir(steps[-1]) if steps else None

    def save(self, step: int, parts: dict[str, Stateful], inference: dict[str, Any] | None = None) -> str:
        d = self.step_dir(step)
        # The digests go into COMPLETE (written last) rather than sidecar files: one record says both
        # that the directory is whole and what its bytes are.
        sums = {STATE_FILE: save_torch({name: part.state_dict() for name, part in parts.items()},
                                       f"{d}/{STATE_FILE}", sidecar=False)}
        if inference is not None:
            sums[INFERENCE_FILE] = save_inference_checkpoint(inference, f"{d}/{INFERENCE_FILE}", sidecar=False)
        with self.fs.open(f"{self.fs._strip_protocol(d)}/{COMPLETE_FILE}", "w") as fh:
            fh.write(json.dumps({"step": step, "checksums": True, "sha256": sums}, sort_keys=True) + "\n")
        self._prune()
        return d

    def load(self, path: str, parts: dict[str, Stateful]) -> None:
        """Restore ``parts`` from a step directory (or its train_state.pt). Missing parts are an error."""
        path = path.rstrip("/")
        state_path = path if path.endswith(".pt") else f"{path}/{STATE_FILE}"
        state = load_torch(state_path)
        missing = sorted(set(parts) - set(state))
        if missing:
            raise ValueError(f"checkpoint {state_path} has no state for {missing} (has {sorted(state)})")
        for name, part in parts.items():
            part.load_state_dict(state[name])

    def _prune(self) -> None:
        if self.keep <= 0:
            return
        for step in self.steps()[: -self.keep]:
            self.fs.rm(self.fs._strip_protocol(self.step_dir(step)), recursive=True)


class Checkpointer(Protocol):
    """Where a ``Trainer`` saves and resumes. ``StepFolders`` here (a step folder per checkpoint, local path or
    fsspec URI); ``distributed.checkpointing.RayCheckpointer`` (DeepSpeed's files + ``ray.train.report``)."""

    def save(self, trainer) -> str | None: ...

    def resume(self, trainer) -> None: ...


class StepFolders:
    """The local trainer's checkpoints: ``CheckpointManager`` step folders; ``resume`` is ``train.resume``
    (``auto``: the newest complete step folder, ``never``, or a step folder's path)."""

    def __init__(self, manager: CheckpointManager, resume: str = "auto") -> None:
        self.manager, self.how = manager, resume

    def save(self, trainer) -> str:
        payload = trainer.inference_payload()  # every rank calls it (collective for a sharded EMA)
        path = self.manager.save(trainer.state.step, trainer.parts(), payload if trainer.is_main else None)
        log.info("saved checkpoint %s", path)
        return path

    def resume(self, trainer) -> None:
        path = self.manager.latest() if self.how == "auto" else None if self.how == "never" else self.how
        if path is None:
            return
        self.manager.load(path, trainer.parts())
        trainer.resumed(f"resumed from {path} at step {trainer.state.step}")
