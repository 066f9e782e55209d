"""`DistributedTrainer`: the local training loop (`unimat_dist.training.loop.Trainer`) on one Ray Train
worker, with a DeepSpeed engine, collective validation, Ray Train checkpoints and Prometheus metrics.

What changes against the local loop, and nothing else:

* the engine is `DeepSpeedEngine` (ZeRO 0-3; gradient accumulation, clipping and the optimizer step are
  DeepSpeed's, the LR schedule and EMA are the loop's);
* validation splits the validation batches over the ranks and all-reduces (sum of losses, count);
  under ZeRO-3 every rank runs the same number of forwards (padded with weight-0 batches), since each
  forward all-gathers parameters;
* checkpoints: every rank writes DeepSpeed's files and its loop state into a local temp dir and calls
  ``ray.train.report(checkpoint=...)``; Ray merges the ranks' files into one checkpoint in the run's
  storage (see ``checkpointing.py`` for the layout and resuming on another world size);
* rank 0 exports Prometheus metrics and keeps ``metrics.jsonl`` (carried inside each checkpoint so the
  loss curve continues after a restart);
* integrity: every rank lists the sha256 of each file it wrote in ``sha256_rank_<r>.json`` and rank 0
  marks ``meta.json`` with ``"checksums": 1``. A resume first copies the checkpoint into a private
  folder through ``verified_copy`` - every file checked against those lists, every ``.pt`` file parsed
  with the weights-only unpickler (DeepSpeed's few plain-data classes allowed) - and then lets
  DeepSpeed (and ``ds_to_universal``) read only that copy, through a weights-only checkpoint engine.
  A checkpoint in shared storage therefore cannot run code on the workers, and an altered one is
  refused with an error naming the file. Checkpoints from before this load with a warning.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch

from unimat_dist import safe_io
from unimat_dist.sampling.checkpoint import INFERENCE_FILE, inference_payload, save_inference_checkpoint, step_name
from unimat_dist.training.ema import EMA
from unimat_dist.training.loop import Trainer, truncate_metrics

from . import checkpointing as ck
from .metrics import TrainMetrics

log = logging.getLogger(__name__)

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
    meta_bytes = (src / ck.META_FILE).read_bytes() if (src / ck.META_FILE).exists() else None
    if meta_bytes is None:
        raise ValueError(f"{ckpt_dir} is not a unimat distributed checkpoint (no {ck.META_FILE})")
    safe_io.check_digest(meta_bytes, recorded.get(ck.META_FILE), str(src / ck.META_FILE), required=bool(lists))
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
        needed = required and (f.suffix == ".pt" or rel in (ck.META_FILE, ck.METRICS_FILE))
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


class RankZeroReporting:
    """Trainer observer of rank 0: Ray/Prometheus metrics per step and per logged record, the record on the
    driver's console (``progress.ProgressReporter``) and one log line in the worker's log."""

    def __init__(self, metrics: TrainMetrics, progress, run_name: str) -> None:
        self.metrics, self.progress, self.run_name = metrics, progress, run_name

    def on_step(self, trainer: Trainer, seconds: float, data_wait: float) -> None:
        if trainer.is_main:
            s = trainer.spec
            self.metrics.observe_step(step=trainer.state.step, seconds=seconds, data_wait=data_wait,
                                      samples_per_step=trainer.cfg.train.global_batch_size, slots=s.L * s.H * s.W)

    def on_log(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.metrics.observe_loss(float(record["loss"]))
        if self.progress is not None:
            self.progress.step(record)
        log.info("run=%s step=%d loss=%.5f lr=%.3g samples/s=%.1f", self.run_name, record["step"], record["loss"],
                 record.get("lr", float("nan")), record.get("samples_per_s", float("nan")))


class FailureInjection:
    """Trainer observer for the fault-tolerance tests (``distributed.fail_at``): the chosen rank SIGKILLs
    itself after the chosen step, at most ``times`` times per run (markers in the run's storage)."""

    def __init__(self, fail_at, marker_fs, marker_dir: str | None) -> None:
        self.fail_at, self.marker_fs, self.marker_dir = fail_at, marker_fs, marker_dir

    def on_step(self, trainer: Trainer, seconds: float, data_wait: float) -> None:
        f = self.fail_at
        if f.step is None or trainer.state.step != f.step or trainer.rank != f.rank or self.marker_fs is None:
            return
        prefix = f"{self.marker_dir}/fail_rank{f.rank}_step{f.step}_"
        self.marker_fs.makedirs(self.marker_dir, exist_ok=True)
        done = [p for p in self.marker_fs.ls(self.marker_dir, detail=False) if Path(p).name.startswith(Path(prefix).name)]
        if len(done) >= f.times:
            return
        self.marker_fs.pipe_file(f"{prefix}{uuid.uuid4().hex}", b"injected\n")
        log.warning("injected failure: rank %d kills itself (SIGKILL) after step %d", trainer.rank, trainer.state.step)
        os.kill(os.getpid(), signal.SIGKILL)

    def on_log(self, trainer: Trainer, record: dict[str, Any]) -> None:
        pass


class DistributedTrainer(Trainer):
    def __init__(self, cfg, *, template: torch.nn.Module | None, run_name: str, **kwargs) -> None:
        super().__init__(cfg, **kwargs)
        self.template = template  # an unpartitioned copy of the model (ZeRO-3 EMA materialisation)
        self.run_name = run_name
        self.resumes = 0

    # ------------------------------------------------------------------ parts
    def parts(self) -> dict[str, Any]:
        p = super().parts()
        p.pop("engine")  # DeepSpeed saves model + optimizer itself
        return p

    # ------------------------------------------------------------------ validation (Trainer.validate)
    def _val_modules(self) -> list[tuple[str, torch.nn.Module, bool]]:
        """Under ZeRO-3 the raw weights are partitioned (every rank in every forward) and the EMA is
        sharded: its full copy is materialised on each rank for the validation."""
        zero3 = self.engine.zero_stage == 3
        ema_module = self.ema.module if isinstance(self.ema, EMA) else self.ema.full_module(self.engine.module, self.template)
        ema_module.to(self.device)
        return [("val/loss", self.engine.module, zero3), ("val/loss_ema", ema_module, False)]

    # ------------------------------------------------------------------ checkpoints (collective)
    def inference_payload(self) -> dict[str, Any] | None:
        """Collective under ZeRO-3 (EMA shards are gathered); the payload is built on rank 0 only."""
        from unimat_dist.config import to_dict

        if isinstance(self.ema, EMA):
            return super().inference_payload() if self.is_main else None
        full = self.ema.full_state_dict(self.engine.module)
        if not self.is_main:
            return None
        self.template.load_state_dict(full)
        return inference_payload(
            self.template.denoiser, self.template.config(), self.spec, self.normalizer, self.scaler,
            train_config=to_dict(self.cfg), step=self.state.step, weights="ema",
        )

    def save_checkpoint(self) -> str | None:
        import ray.train

        step = self.state.step
        tmp = Path(tempfile.mkdtemp(prefix=f"unimat-ckpt-{step:08d}-r{self.rank}-"))
        try:
            self.engine.ds.save_checkpoint(str(tmp / ck.DS_DIR), tag=ck.DS_TAG, client_state={"step": step})
            state = {name: part.state_dict() for name, part in self.parts().items()}
            torch.save(state, tmp / ck.rank_file(self.rank))
            # (verified_copy proves on resume that this holds only tensors and plain data)
            payload = self.inference_payload()
            metrics = {"step": step}
            if self.is_main:
                inference_sha256 = save_inference_checkpoint(payload, str(tmp / INFERENCE_FILE))
                meta = {
                    "step": step,
                    "samples_seen": self.state.samples_seen,
                    "world_size": self.world_size,
                    "micro_batch": self.micro_batch,
                    "zero_stage": self.engine.zero_stage,
                    "run_name": self.run_name,
                    "resumes": self.resumes,
                    "checksums": 1,  # every rank's files are listed in sha256_rank_<r>.json
                    # also here: the launcher copies inference.pt + meta.json to out_dir, where sampling
                    # verifies it through this entry (sampling.checkpoint.recorded_sha256)
                    "sha256": {INFERENCE_FILE: inference_sha256},
                }
                (tmp / ck.META_FILE).write_text(json.dumps(meta, indent=1))
                if self.run_dir is not None and (self.run_dir / ck.METRICS_FILE).exists():
                    shutil.copy(self.run_dir / ck.METRICS_FILE, tmp / ck.METRICS_FILE)
                if self.history:
                    metrics["loss"] = float(self.history[-1]["loss"])
            # Last: the sha256 of every file this rank wrote (Ray merges the ranks' folders; the lists
            # have distinct names and together cover the checkpoint).
            safe_io.write_checksums(str(tmp / checksums_file(self.rank)), str(tmp),
                                    [p for p in tmp.rglob("*") if p.is_file()])
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if self.is_main:
            log.info("run=%s checkpoint at step %d reported", self.run_name, step)
        return step_name(step)

    def maybe_resume(self) -> None:
        """Resuming happens in ``resume_from`` before ``fit`` (the DeepSpeed engine must know whether to
        load a universal checkpoint when it is created)."""

    def resume_from(self, ckpt_dir: str, meta: dict[str, Any], universal: tuple[str, str] | None) -> None:
        """Resume from ``ckpt_dir``, which must be a ``verified_copy`` (its files are read as they are)."""
        ckpt = Path(ckpt_dir)
        ds = self.engine.ds
        if universal is None:
            saved_engine = ds.checkpoint_engine
            ds.checkpoint_engine = _WeightsOnlyCheckpointEngine(saved_engine)
            try:
                ds.load_checkpoint(str(ckpt / ck.DS_DIR), tag=ck.DS_TAG)
            finally:
                ds.checkpoint_engine = saved_engine
        else:
            # ds_to_universal's output, converted in this node's private folder from the verified copy
            ds.load_checkpoint(universal[0], tag=universal[1])
        same_world = meta["world_size"] == self.world_size
        own = ckpt / ck.rank_file(self.rank)
        if same_world:
            state = safe_io.torch_loads(own.read_bytes(), str(own))
            for name, part in self.parts().items():
                part.load_state_dict(state[name])
        else:
            state0 = safe_io.torch_loads((ckpt / ck.rank_file(0)).read_bytes(), str(ckpt / ck.rank_file(0)))
            self.state.load_state_dict(state0["train_state"])
            if isinstance(self.ema, EMA):
                self.ema.load_state_dict(state0["ema"])
            else:
                from unimat_dist.sampling.checkpoint import load_torch

                inf = load_torch(str(ckpt / INFERENCE_FILE))
                full = {f"denoiser.{k}": v for k, v in inf["state_dict"].items()}
                self.ema.load_full(full, state0["ema"]["num_updates"])
            self.train_source.load_state_dict(
                self.train_source.resize_state(state0["data"], meta["world_size"], meta["micro_batch"])
            )
            reseed = self.cfg.seed * 1_000_003 + self.state.step * 1009 + self.rank
            torch.manual_seed(reseed)
            self.batcher.generator.manual_seed(reseed + 17)
            log.info("rank %d: resumed a %d-worker checkpoint on %d workers (data position mapped, RNG re-seeded)",
                     self.rank, meta["world_size"], self.world_size)
        self.resumes = int(meta.get("resumes", 0)) + 1
        self._iter = None
        if self.is_main and self.run_dir is not None and (ckpt / ck.METRICS_FILE).exists():
            shutil.copy(ckpt / ck.METRICS_FILE, self.run_dir / ck.METRICS_FILE)
            truncate_metrics(self.run_dir / ck.METRICS_FILE, self.state.step)
        log.info("rank %d resumed from %s at step %d", self.rank, ckpt_dir, self.state.step)
