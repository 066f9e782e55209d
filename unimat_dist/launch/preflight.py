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
* ``trainer: ray``: the DeepSpeed config and ``distributed.fail_at`` (``training.distributed_config.check_config``).

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


def world_sizes(cfg: TrainConfig) -> list[int]:
    return cfg.distributed.worker_counts() if cfg.trainer == "ray" else [1]


def check_batches(cfg: TrainConfig) -> list[str]:
    t = cfg.train
    out = []
    for world in world_sizes(cfg):
        micro = t.micro_batch_size or t.global_batch_size // world
        if micro < 1 or t.global_batch_size % (micro * world):
            what = "distributed.num_workers" if cfg.trainer == "ray" else "world size"
            raise PreflightError(
                f"train.global_batch_size: {t.global_batch_size} is not divisible by workers x train.micro_batch_size "
                f"= {world} x {micro} ({what} {world})"
            )
        out.append(f"{world} worker(s): micro-batch {micro} x {t.global_batch_size // (micro * world)} accumulation")
    return out


def run_preflight(cfg: TrainConfig, *, storage_timeout_s: float = 30.0) -> list[str]:
    """All checks; returns one 'ok' line per check, raises PreflightError (a ValueError) on the first failure."""
    lines = [f"trainer: {cfg.trainer}, world size(s) {world_sizes(cfg)}"]
    lines += [f"batch: {ln}" for ln in check_batches(cfg)]
    d = cfg.data
    if d.manifest:
        from unimat_dist.shards.manifest import read_manifest
        from unimat_dist.training.setup import manifest_spec

        m = _bounded(lambda: read_manifest(d.manifest, d.storage_options or None), storage_timeout_s,
                     f"data.manifest: {d.manifest}")
        try:
            manifest_spec(d, m)
        except ValueError as exc:
            raise PreflightError(f"data.manifest: {exc}") from None
        for key, split in (("data.train_split", d.train_split), ("data.val_split", d.val_split)):
            if split not in m.split_counts:
                raise PreflightError(f"{key}: {m.uri} has no split {split!r} (has {sorted(m.split_counts)})")
        lines.append(f"data: manifest {m.uri}, splits {dict(m.split_counts)}")
    else:
        from pathlib import Path

        from unimat_dist.datasets import resolve_split

        for key, split in (("data.train_split", d.train_split), ("data.val_split", d.val_split)):
            try:
                r = resolve_split(d.dataset, split)
            except (ValueError, KeyError, FileNotFoundError) as exc:
                raise PreflightError(f"data.dataset: {d.dataset}/{split}: {exc}") from None
            if not Path(r.path).exists():
                raise PreflightError(f"{key}: {d.dataset}/{split}: {r.path} does not exist")
            lines.append(f"data: {d.dataset}/{split} -> {r.path}")
    if cfg.trainer == "ray":
        from unimat_dist.training.distributed_config import check_config, run_name_of, storage_of

        dist = cfg.distributed
        key = "distributed.storage_path" if dist.storage_path else "out_dir"
        storage = storage_of(cfg)
        kind = probe_storage(storage, dist.storage_options, key, storage_timeout_s)
        lines.append(f"storage: {storage} writable ({kind}), run name {run_name_of(cfg)}")
        try:
            check_config(cfg)
        except (ValueError, FileNotFoundError) as exc:
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
