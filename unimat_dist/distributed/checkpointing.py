"""Layout of a distributed training checkpoint, and resuming it on the same or a different world size.

A checkpoint is one Ray Train checkpoint directory (every rank writes its files into a local temp dir
and reports it; Ray merges them into ``<storage_path>/<run>/checkpoint_<time>/`` on local disk or cloud
storage)::

    deepspeed/state/...             DeepSpeed files: model states and ZeRO-partitioned optimizer states of
                                    every rank (ZeRO-3: per-rank model shards too) + zero_to_fp32.py
    rank_00000.pt ... rank_0000N.pt per-rank loop state: train step, EMA (ZeRO-3: this rank's shards),
                                    data position, batcher RNG, global RNGs
    inference.pt                    consolidated EMA weights + config + UniMat spec + normaliser: what
                                    ``unimat sample`` and the server load, with no DeepSpeed
    meta.json                       step, samples seen, world size, ZeRO stage, run name
    metrics.jsonl                   the loss curve up to this step (restored on resume)

Resuming on the same world size restores everything exactly. On a different world size DeepSpeed's
partitioned states are first converted to its *universal* checkpoint format (``ds_to_universal``) and
re-partitioned on load; model, optimizer, EMA, step and LR schedule continue exactly, the data
position continues at the same global sample offset of the epoch (rounded down to the new global
micro-batch stride; shard-based data resumes at the same epoch and an equivalent batch count), and the
per-rank RNG streams are re-seeded from (seed, step, rank).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

DS_DIR = "deepspeed"
DS_TAG = "state"
META_FILE = "meta.json"
METRICS_FILE = "metrics.jsonl"


def rank_file(rank: int) -> str:
    return f"rank_{rank:05d}.pt"


def read_meta(ckpt_dir: str | Path) -> dict:
    p = Path(ckpt_dir) / META_FILE
    if not p.exists():
        raise ValueError(f"{ckpt_dir} is not a unimat distributed checkpoint (no {META_FILE})")
    return json.loads(p.read_text())


def universal_dir(ckpt_dir: str | Path) -> Path:
    """Node-local folder for the universal conversion of a checkpoint (shared by the ranks of a node)."""
    key = hashlib.sha256(str(Path(ckpt_dir).resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "unimat-universal" / key


def convert_to_universal(ckpt_dir: str | Path, out_root: Path) -> tuple[str, str]:
    """Run DeepSpeed's ``ds_to_universal`` on a checkpoint; returns (load_dir, tag) for ``load_checkpoint``.

    Idempotent: a finished conversion (marked by ``DONE``) is reused.
    """
    src = Path(ckpt_dir) / DS_DIR / DS_TAG
    tag = f"{DS_TAG}_universal"
    dst = out_root / tag
    done = out_root / "DONE"
    if not done.exists():
        out_root.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
            "--input_folder", str(src), "--output_folder", str(dst),
            "--num_extract_workers", "1", "--num_merge_workers", "1",
        ]
        log.info("world size changed: converting %s to a universal checkpoint", src)
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if r.returncode != 0:
            raise RuntimeError(f"ds_to_universal failed on {src}:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
        done.write_text("ok\n")
    return str(out_root), tag


def latest_complete(storage_path: str, run_name: str, storage_options: dict | None = None) -> tuple[str, dict] | None:
    """(checkpoint URI, meta) of the newest *complete* checkpoint of a run in its storage, or None.

    Ray Train registers a reported checkpoint only when its controller next polls the workers, so a
    worker that dies right after ``report`` can leave a fully written checkpoint the controller never
    heard of; resuming from what is in storage (complete = meta.json, every rank's loop state and the
    DeepSpeed files are there) never loses that progress.
    """
    from unimat_dist.storage import filesystem

    fs, root = filesystem(f"{storage_path.rstrip('/')}/{run_name}", storage_options or None)
    try:
        entries = [p for p in fs.ls(root, detail=False) if Path(p.rstrip("/")).name.startswith("checkpoint_")]
    except FileNotFoundError:
        return None
    best: tuple[int, str, dict] | None = None
    for entry in entries:
        entry = entry.rstrip("/")
        try:
            meta = json.loads(fs.cat_file(f"{entry}/{META_FILE}"))
            names = {Path(p.rstrip("/")).name for p in fs.ls(entry, detail=False)}
        except (FileNotFoundError, ValueError, OSError):
            continue
        if DS_DIR not in names or any(rank_file(r) not in names for r in range(int(meta["world_size"]))):
            continue
        if best is None or meta["step"] > best[0]:
            best = (int(meta["step"]), entry, meta)
    if best is None:
        return None
    scheme = storage_path.split("://", 1)[0] if "://" in storage_path else None
    uri = best[1] if scheme in (None, "file") else f"{scheme}://{best[1]}"
    return uri, best[2]


def local_copy(uri: str, storage_options: dict | None = None) -> tuple[str, str | None]:
    """(local directory, temp dir to delete or None) holding a checkpoint given by path or URI."""
    from unimat_dist.storage import filesystem, is_local, split_uri

    if is_local(uri):
        return split_uri(uri)[1], None
    fs, path = filesystem(uri, storage_options or None)
    tmp = tempfile.mkdtemp(prefix="unimat-resume-")
    fs.get(path.rstrip("/") + "/", tmp + "/", recursive=True)
    return tmp, tmp
