"""A DeepSpeed training checkpoint: its layout, its integrity, and restoring it on the same or a different
world size. Plain DeepSpeed and files; no Ray (``distributed.checkpointing`` reports the folders to Ray Train).

A checkpoint is one folder (every rank writes its files into a folder of its own with ``write_checkpoint``;
under Ray Train, Ray merges the ranks' folders into ``<storage_path>/<run>/checkpoint_<time>/`` on local disk
or cloud storage)::

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

Integrity: every rank lists the sha256 of each file it wrote in ``sha256_rank_<r>.json`` and rank 0 marks
``meta.json`` with ``"checksums": 1``. A resume first copies the checkpoint into a private folder through
``verified_copy`` - every file checked against those lists, every ``.pt`` file parsed with the weights-only
unpickler (DeepSpeed's few plain-data classes allowed) - and then lets DeepSpeed (and ``ds_to_universal``)
read only that copy, through a weights-only checkpoint engine. A checkpoint in shared storage therefore
cannot run code on the workers, and an altered one is refused with an error naming the file. Checkpoints
from before this load with a warning.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from unimat_dist import safe_io

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
    heard of; resuming from what is in storage never loses that progress. Complete means: meta.json, every
    rank's loop state and the DeepSpeed files are there and, for a checkpoint written with checksum lists,
    every rank's list is there and every file it lists has the listed size. A rank whose node died while
    its files were being copied into storage leaves a torn checkpoint (a file cut short, or missing); it is
    skipped with a warning and the one before it resumes (a file whose size is right but whose bytes are
    not is refused by ``verified_copy`` instead).
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
        if best is not None and meta["step"] <= best[0]:
            continue
        torn = _torn(fs, entry, meta)
        if torn:
            log.warning("skipping checkpoint %s (step %s): %s; an earlier one resumes", entry, meta.get("step"), torn)
            continue
        best = (int(meta["step"]), entry, meta)
    if best is None:
        return None
    scheme = storage_path.split("://", 1)[0] if "://" in storage_path else None
    uri = best[1] if scheme in (None, "file") else f"{scheme}://{best[1]}"
    return uri, best[2]


def _torn(fs, entry: str, meta: dict) -> str | None:
    """Why the checkpoint at ``entry`` was not written whole (a missing checksum list, or a listed file
    missing or of another size than listed), or None. Checkpoints without lists are judged by the caller."""
    if not meta.get("checksums"):
        return None
    try:
        sizes = {p[len(entry) + 1:]: int(info.get("size") or 0) for p, info in fs.find(entry, detail=True).items()}
    except (FileNotFoundError, OSError) as exc:
        return f"cannot be listed ({exc})"
    for r in range(int(meta["world_size"])):
        name = checksums_file(r)
        if name not in sizes:
            return f"{name} is missing"
        try:
            data = json.loads(fs.cat_file(f"{entry}/{name}"))
            listed = data.get("sizes") or {k: None for k in data["files"]}
        except (ValueError, KeyError, TypeError, AttributeError, OSError):
            return f"{name} is unreadable"
        for rel, size in listed.items():
            if rel not in sizes:
                return f"{rel} (listed by rank {r}) is missing"
            if size is not None and sizes[rel] != size:
                return f"{rel} has {sizes[rel]} bytes, rank {r} wrote {size}"
    return None


def local_copy(uri: str, storage_options: dict | None = None) -> tuple[str, str | None]:
    """(local directory, temp dir to delete or None) holding a checkpoint given by path or URI."""
    from unimat_dist.storage import filesystem, is_local, split_uri

    if is_local(uri):
        return split_uri(uri)[1], None
    fs, path = filesystem(uri, storage_options or None)
    tmp = tempfile.mkdtemp(prefix="unimat-resume-")
    fs.get(path.rstrip("/") + "/", tmp + "/", recursive=True)
    return tmp, tmp


CHECKSUMS_PREFIX = "sha256_rank_"


def checksums_file(rank: int) -> str:
    return f"{CHECKSUMS_PREFIX}{rank:05d}.json"


def verified_copy(ckpt_dir: str | Path, dest: str | Path) -> dict[str, Any]:
    """Copy a distributed checkpoint into ``dest`` (a folder only this process writes), verifying every
    file on the way, and return its meta.json. Raises ``safe_io.IntegrityError`` for a file whose bytes
    differ from the rank's checksum list (or a missing list/entry when the checkpoint was written with
    checksums) and ``safe_io.UnsafeFileError`` for a ``.pt`` file that needs more than tensors and
    plain data; both name the file. What is parsed later is the verified copy, never the storage, so a
    file swapped after the check is never read."""
    src, dst = Path(ckpt_dir), Path(dest)
    files = sorted(p for p in src.rglob("*") if p.is_file())
    lists = [p for p in files if p.parent == src and p.name.startswith(CHECKSUMS_PREFIX)]
    recorded: dict[str, str] = {}
    for lst in lists:
        for rel, digest in safe_io.read_checksums(str(lst)).items():
            if recorded.setdefault(rel, digest) != digest:
                raise safe_io.IntegrityError(f"{lst}: lists {rel} with another sha256 than another rank's list")
    meta_bytes = (src / META_FILE).read_bytes() if (src / META_FILE).exists() else None
    if meta_bytes is None:
        raise ValueError(f"{ckpt_dir} is not a unimat distributed checkpoint (no {META_FILE})")
    safe_io.check_digest(meta_bytes, recorded.get(META_FILE), str(src / META_FILE), required=bool(lists))
    meta = json.loads(meta_bytes)
    # Checksums are required once the checkpoint says it has them (or any list is there): removing the
    # lists or an entry must not turn verification into a warning.
    required = bool(lists) or bool(meta.get("checksums"))
    if required:
        missing = [checksums_file(r) for r in range(int(meta["world_size"])) if not (src / checksums_file(r)).exists()]
        if missing:
            raise safe_io.IntegrityError(f"{ckpt_dir}: checksum list(s) {missing} missing; refusing to resume from it")
    unverified = []
    ds_globals = safe_io.deepspeed_safe_globals()
    for f in files:
        rel = f.relative_to(src).as_posix()
        if f in lists:
            continue
        data = f.read_bytes()
        needed = required and (f.suffix == ".pt" or rel in (META_FILE, METRICS_FILE))
        if rel not in recorded and not needed:
            unverified.append(rel)  # e.g. files Ray adds, or everything of a pre-checksum checkpoint
        else:
            safe_io.check_digest(data, recorded.get(rel), str(f), required=True)
        if f.suffix == ".pt":
            safe_io.torch_loads(data, str(f), "cpu", ds_globals)  # raises before anything unpickles it for real
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    if unverified and not required:
        log.warning("%s was written without checksums: %d file(s) loaded UNVERIFIED (parsed weights-only)", ckpt_dir,
                    len(unverified))
    return meta


class _WeightsOnlyCheckpointEngine:
    """DeepSpeed's checkpoint engine with ``load`` through the weights-only unpickler (DeepSpeed's own
    calls ``torch.load(weights_only=False)``): even a file that reached DeepSpeed unchecked cannot run code."""

    def __init__(self, inner) -> None:
        self._inner = inner

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def load(self, path: str, map_location=None):
        with open(path, "rb") as fh:
            data = fh.read()
        return safe_io.torch_loads(data, str(path), map_location, safe_io.deepspeed_safe_globals())


def _loop_parts(trainer) -> dict[str, Any]:
    """The trainer's stateful parts in a rank file: all but the engine, whose model and optimizer are
    DeepSpeed's own files."""
    return {name: part for name, part in trainer.parts().items() if name != "engine"}




def write_checkpoint(trainer, folder: Path, run_name: str, resumes: int) -> dict[str, Any]:
    """Write this rank's part of a checkpoint of ``trainer`` into ``folder`` (a folder of its own): DeepSpeed's
    files, the rank's loop state, on rank 0 the inference file, meta.json and the loss curve, and last the
    sha256 list of what it wrote. Returns the metrics to report with it (step; rank 0: last loss)."""
    import torch

    from unimat_dist.inference.checkpoint import INFERENCE_FILE, save_inference_checkpoint

    step, rank = trainer.state.step, trainer.rank
    trainer.engine.ds.save_checkpoint(str(folder / DS_DIR), tag=DS_TAG, client_state={"step": step})
    torch.save({name: part.state_dict() for name, part in _loop_parts(trainer).items()}, folder / rank_file(rank))
    # (verified_copy proves on resume that this holds only tensors and plain data)
    payload = trainer.inference_payload()  # collective under ZeRO-3; None off rank 0
    metrics: dict[str, Any] = {"step": step}
    if trainer.is_main:
        meta = {
            "step": step,
            "samples_seen": trainer.state.samples_seen,
            "world_size": trainer.world_size,
            "micro_batch": trainer.micro_batch,
            "zero_stage": trainer.engine.zero_stage,
            "run_name": run_name,
            "resumes": resumes,
            "checksums": 1,  # every rank's files are listed in sha256_rank_<r>.json
            # also here: the launcher copies inference.pt + meta.json to out_dir, where sampling
            # verifies it through this entry (inference.checkpoint.recorded_sha256)
            "sha256": {INFERENCE_FILE: save_inference_checkpoint(payload, str(folder / INFERENCE_FILE))},
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=1))
        if trainer.run_dir is not None and (trainer.run_dir / METRICS_FILE).exists():
            shutil.copy(trainer.run_dir / METRICS_FILE, folder / METRICS_FILE)
        if trainer.history:
            metrics["loss"] = float(trainer.history[-1]["loss"])
    # Last: the sha256 of every file this rank wrote (the ranks' lists have distinct names and together
    # cover the merged checkpoint).
    safe_io.write_checksums(str(folder / checksums_file(rank)), str(folder), [p for p in folder.rglob("*") if p.is_file()])
    return metrics


def restore(trainer, ckpt_dir: str, meta: dict[str, Any], universal: tuple[str, str] | None) -> int:
    """Restore ``trainer`` from ``ckpt_dir``, a ``verified_copy`` (its files are read as they are) whose
    meta.json is ``meta``; ``universal``: DeepSpeed's universal conversion of it when the world size changed.
    Returns the run's resume count, this resume included."""
    import torch

    from unimat_dist.inference.checkpoint import INFERENCE_FILE, load_torch

    ckpt, ds, rank = Path(ckpt_dir), trainer.engine.ds, trainer.rank
    if universal is None:
        saved_engine = ds.checkpoint_engine
        ds.checkpoint_engine = _WeightsOnlyCheckpointEngine(saved_engine)
        try:
            ds.load_checkpoint(str(ckpt / DS_DIR), tag=DS_TAG)
        finally:
            ds.checkpoint_engine = saved_engine
    else:
        # ds_to_universal's output, converted in this node's private folder from the verified copy
        ds.load_checkpoint(universal[0], tag=universal[1])
    if meta["world_size"] == trainer.world_size:
        own = ckpt / rank_file(rank)
        state = safe_io.torch_loads(own.read_bytes(), str(own))
        for name, part in _loop_parts(trainer).items():
            part.load_state_dict(state[name])
    else:
        state0 = safe_io.torch_loads((ckpt / rank_file(0)).read_bytes(), str(ckpt / rank_file(0)))
        trainer.state.load_state_dict(state0["train_state"])

        def full_weights() -> dict:  # the EMA weights of the whole model, for a sharded EMA
            inf = load_torch(str(ckpt / INFERENCE_FILE))
            return {f"denoiser.{k}": v for k, v in inf["state_dict"].items()}

        trainer.ema.load_resharded(state0["ema"], full_weights)
        src = trainer.train_source
        src.load_state_dict(src.resize_state(state0["data"], meta["world_size"], meta["micro_batch"]))
        reseed = trainer.cfg.seed * 1_000_003 + trainer.state.step * 1009 + rank
        torch.manual_seed(reseed)
        trainer.batcher.generator.manual_seed(reseed + 17)
        log.info("rank %d: resumed a %d-worker checkpoint on %d workers (data position mapped, RNG re-seeded)",
                 rank, meta["world_size"], trainer.world_size)
    if trainer.is_main and trainer.run_dir is not None and (ckpt / METRICS_FILE).exists():
        shutil.copy(ckpt / METRICS_FILE, trainer.run_dir / METRICS_FILE)
    trainer.resumed(f"resumed from {ckpt_dir} at step {trainer.state.step}")
    return int(meta.get("resumes", 0)) + 1
