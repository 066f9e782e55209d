"""``unimat train --dry-run``: every check of a training config that needs neither data nor workers.

    unimat train --config cluster/jobs/train_tiny_ray_cpu.yaml --dry-run
    unimat train --config cluster/jobs/train_tiny_ray_cpu.yaml --print-config distributed.num_workers=4

Checked, in order, each failing with one line that names the config key:

* world size(s): 1 for ``trainer: local``; ``distributed.num_workers`` (``min_workers`` .. ``num_workers``
  when elastic) for ``trainer: ray``;
* batch divisibility: ``train.global_batch_size`` = workers x ``train.micro_batch_size`` x accumulation
  for every world size;
* data sources: the manifest (``data.manifest``: readable, its splits, at least one shard per worker,
  its spec matching the config) or the data set's splits (``data.dataset``); nothing is decoded;
* storage: the run storage (``distributed.storage_path``, default ``<out_dir>/ray``) or the local run's
  ``out_dir`` / ``checkpoint_dir`` is listed and a probe file written and deleted there (fsspec), within
  ``timeout_s``;
* ``trainer: ray``: the DeepSpeed config and ``distributed.fail_at`` (``training.distributed_config.check_engine``).

Ray itself is not started.
"""
from __future__ import annotations

import threading
import uuid
from typing import Any, Callable

from unimat_dist.training.config import TrainConfig


class PreflightError(ValueError):
    """A check failed; the message is one line and starts with the config key."""


def _bounded(fn: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Run ``fn`` in a thread; PreflightError(what ...) when it raises or takes longer than ``timeout_s``."""
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported below
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise PreflightError(f"{what}: not reachable within {timeout_s:.0f} s")
    if "error" in box:
        exc = box["error"]
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise PreflightError(f"{what}: {type(exc).__name__}: {detail}")
    return box.get("value")


def probe_storage(uri: str, storage_options: dict[str, Any] | None, key: str, timeout_s: float = 30.0) -> str:
    """List (creating if needed) ``uri`` and write + delete a probe file there."""
    from unimat_dist.storage import filesystem

    def probe():
        fs, path = filesystem(uri, storage_options or None)
        path = path.rstrip("/") or "/"
        created = None  # the top-most folder this probe creates (removed again: a dry run leaves nothing)
        p = path
        while not fs.exists(p):
            created, parent = p, p.rsplit("/", 1)[0]
            if parent in ("", p):
                break
            p = parent
        fs.makedirs(path, exist_ok=True)
        try:
            fs.ls(path, detail=False)
            name = f"{path}/.unimat-dry-run-{uuid.uuid4().hex[:12]}"
            fs.pipe_file(name, b"probe\n")
            fs.rm(name)
        finally:
            if created is not None:
                try:
                    fs.rm(created, recursive=True)
                except (OSError, FileNotFoundError):  # object stores have no empty folders
                    pass
        return type(fs).__name__

    return _bounded(probe, timeout_s, f"{key}: storage {uri}")


def run_preflight(cfg: TrainConfig, *, storage_timeout_s: float = 30.0) -> list[str]:
    """All checks; returns one 'ok' line per check, raises PreflightError (a ValueError) on the first failure.
    The config checks are ``training.distributed_config``'s, the ones ``run_training`` applies; what this
    adds is reading the manifest and probing storage within ``storage_timeout_s``."""
    from unimat_dist.training.distributed_config import (batch_plan, check_dataset, check_engine, check_manifest,
                                                         run_name_of, storage_of)

    try:
        plan = batch_plan(cfg)
    except ValueError as exc:
        raise PreflightError(str(exc)) from None
    lines = [f"trainer: {cfg.trainer}, world size(s) {[w for w, _, _ in plan]}"]
    lines += [f"batch: {w} worker(s): micro-batch {micro} x {accum} accumulation" for w, micro, accum in plan]
    d = cfg.data
    try:
        if d.manifest:
            from unimat_dist.shards.manifest import read_manifest

            manifest = _bounded(lambda: read_manifest(d.manifest, d.storage_options or None), storage_timeout_s,
                                f"data.manifest: {d.manifest}")
            check_manifest(cfg, manifest)
            lines.append(f"data: manifest {manifest.uri}, splits {dict(manifest.split_counts)}")
        else:
            lines += [f"data: {d.dataset}/{split} -> {path}" for split, path in check_dataset(cfg)]
    except (ValueError, FileNotFoundError) as exc:
        raise PreflightError(str(exc)) from None
    if cfg.trainer == "ray":
        dist = cfg.distributed
        key = "distributed.storage_path" if dist.storage_path else "out_dir"
        storage = storage_of(cfg)
        kind = probe_storage(storage, dist.storage_options, key, storage_timeout_s)
        lines.append(f"storage: {storage} writable ({kind}), run name {run_name_of(cfg)}")
        try:
            check_engine(cfg)  # batch and data were checked above; the manifest is not read again
        except ValueError as exc:
            raise PreflightError(str(exc)) from None
        lines.append(f"ray: {dist.num_workers} worker(s), ZeRO-{dist.zero_stage}, "
                     f"address {dist.ray_address or 'RAY_ADDRESS or a new local Ray'}")
    else:
        kind = probe_storage(cfg.out_dir, None, "out_dir", storage_timeout_s)
        lines.append(f"storage: out_dir {cfg.out_dir} writable ({kind})")
        if cfg.checkpoint_dir:
            kind = probe_storage(cfg.checkpoint_dir, None, "checkpoint_dir", storage_timeout_s)
            lines.append(f"storage: checkpoint_dir {cfg.checkpoint_dir} writable ({kind})")
    return lines


__all__ = ["PreflightError", "probe_storage", "run_preflight"]
