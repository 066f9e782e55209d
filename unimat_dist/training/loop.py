"""The training loop: `Trainer.fit` runs optimizer steps over an `Engine`, with EMA, validation,
checkpoints, metrics and a progress bar. Plain PyTorch. A Ray Train worker runs the same class with
its rank and world size, a DeepSpeed engine, a shard data source, a sharded EMA under ZeRO-3 and a
``RayCheckpointer`` (``distributed/worker.py``); the local trainer is the case world size 1 with a
``StepFolders`` checkpointer. What differs is behind three protocols: ``Engine`` (engine.py), the EMA
(ema.py) and ``Checkpointer`` (checkpoint.py).

One optimizer step (``train_step``)::

    lr = lr_at(step)                     # pure function of the step
    engine.set_lr(lr)
    for each of `accum` micro-batches:   # micro * accum * world_size == global_batch_size
        loss = engine.loss(batcher(next(source)));  engine.backward(loss)
    grad_norm = engine.step();  ema.update(engine.module)

Only rank 0 logs, plots and writes the inference checkpoint.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import torch

from unimat_dist.config import to_dict
from unimat_dist.model.conditioning import PropertyScaler
from unimat_dist.representation import Normalizer, UniMatSpec
from unimat_dist.inference.checkpoint import inference_payload

from .batches import Batcher
from .checkpoint import Checkpointer, RNGState
from .config import TrainConfig
from .data import EncodedSet, TimedSource, iter_batches
from .ema import EMA
from .engine import Engine
from .lr import lr_at

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    samples_seen: int = 0  # over all ranks
    seconds: float = 0.0  # wall-clock seconds of training so far, across resumes (learning curves vs time)

    def state_dict(self) -> dict[str, float]:
        return {"step": self.step, "samples_seen": self.samples_seen, "seconds": self.seconds}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.step, self.samples_seen = int(state["step"]), int(state["samples_seen"])
        self.seconds = float(state.get("seconds", 0.0))


class TrainObserver(Protocol):
    """What a run reports outside its own files (the Ray adapter's metrics, the driver's console, fault
    injection): ``on_step`` after every optimizer step on every rank, ``on_log`` on rank 0 for every logged
    training record (the mean over ``log_every`` steps)."""

    def on_step(self, trainer: "Trainer", seconds: float, data_wait: float) -> None: ...

    def on_log(self, trainer: "Trainer", record: dict[str, Any]) -> None: ...


@dataclass
class TrainResult:
    steps: int
    first_loss: float  # mean training loss over the first logging window of this run
    last_loss: float  # mean training loss over the last logging window
    val_loss: float | None  # EMA weights, at the end
    checkpoint: str | None  # last step directory
    inference_checkpoint: str | None
    history: list[dict[str, float]]  # the logged training metrics


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        *,
        engine: Engine,
        ema: EMA,
        batcher: Batcher,
        train_source,
        val_data: EncodedSet | None,
        spec: UniMatSpec,
        normalizer: Normalizer,
        scaler: PropertyScaler,
        checkpointer: Checkpointer | None,
        run_dir: Path | None,
        autocast_dtype: torch.dtype | None = None,
        rank: int = 0,
        world_size: int = 1,
        observers: Sequence[TrainObserver] = (),
        template: torch.nn.Module | None = None,
    ) -> None:
        self.cfg, self.engine, self.ema, self.batcher = cfg, engine, ema, batcher
        self.train_source, self.val_data = TimedSource(train_source), val_data
        self.observers = list(observers)
        self.spec, self.normalizer, self.scaler = spec, normalizer, scaler
        self.checkpointer, self.run_dir = checkpointer, run_dir
        self.template = template  # an unpartitioned copy of the model, for a sharded EMA's full weights
        self.autocast_dtype = autocast_dtype
        self.rank, self.world_size = rank, world_size
        self.micro_batch, self.accum = cfg.train.grad_accum_steps(world_size)
        self.state = TrainState()
        self.history: list[dict[str, float]] = []
        self._iter: Iterator[dict[str, Any]] | None = None
        self._monitor = None
        self._resume_done = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        return next(self.engine.module.parameters()).device

    def parts(self) -> dict[str, Any]:
        """The stateful parts of a checkpoint (exact resume restores all of them)."""
        return {
            "train_state": self.state,
            "engine": self.engine,
            "ema": self.ema,
            "data": self.train_source,
            "batcher": self.batcher,
            "rng": RNGState(),
        }

    # ------------------------------------------------------------------ one step
    def lr(self, step: int) -> float:
        o = self.cfg.optim
        return lr_at(step, lr=o.lr, warmup_steps=o.warmup_steps, total_steps=self.cfg.train.steps, min_lr_ratio=o.min_lr_ratio)

    def micro_generators(self, j: int) -> tuple[torch.Generator, torch.Generator]:
        """(CPU, device) generators of micro-batch ``j`` of the current step on this rank.

        Seeded by the micro-batch's *global* index ``j * world_size + rank`` within the step, which is
        the position of its samples in the step's global batch for every world size. So a run draws
        the same augmentations, conditioning, timesteps and noise for the same samples whether it runs
        on one process with gradient accumulation or on N ranks: losses agree across world sizes up
        to float reduction order, and a resumed run needs no RNG state to continue exactly.
        """
        g = j * self.world_size + self.rank
        base = (self.cfg.seed * 1_000_003 + self.state.step * 65_537 + g * 257) % (2**62)
        g_cpu = torch.Generator().manual_seed(base)
        g_dev = torch.Generator(device=self.device).manual_seed(base + 1)
        return g_cpu, g_dev

    def train_step(self) -> dict[str, torch.Tensor | float]:
        t0, wait0 = time.perf_counter(), self.train_source.wait
        m = self._optimizer_step()
        for o in self.observers:
            o.on_step(self, time.perf_counter() - t0, self.train_source.wait - wait0)
        return m

    def _optimizer_step(self) -> dict[str, torch.Tensor | float]:
        if self._iter is None:
            self._iter = iter(self.train_source)
        self.engine.module.train()
        lr = self.lr(self.state.step)
        self.engine.set_lr(lr)
        totals: dict[str, torch.Tensor] = {}
        for j in range(self.accum):
            g_cpu, g_dev = self.micro_generators(j)
            loss, metrics = self.engine.loss(self.batcher(next(self._iter), generator=g_cpu), generator=g_dev)
            self.engine.backward(loss)
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + v / self.accum
        grad_norm = self.engine.step()
        self.ema.update(self.engine.module)
        self.state.step += 1
        self.state.samples_seen += self.cfg.train.global_batch_size
        return self._mean_over_ranks({**totals, "lr": lr, "grad_norm": grad_norm})

    # ------------------------------------------------------------------ validation
    def ema_module(self) -> torch.nn.Module:
        """The EMA weights as a plain module on this rank's device; collective for a sharded EMA (ZeRO-3)."""
        return self.ema.full_module(self.engine.module, self.template).to(self.device)

    def _val_modules(self) -> list[tuple[str, torch.nn.Module, bool]]:
        """(metric name, module, collective) to validate: the raw and the EMA weights. A collective module
        needs every rank in every forward (DeepSpeed ZeRO-3 gathers parameters per forward)."""
        return [("val/loss", self.engine.module, self.engine.partitioned), ("val/loss_ema", self.ema_module(), False)]

    def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over the ranks (in place); nothing to do on one process."""
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(t)
        return t

    def _mean_over_ranks(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """The loss of a step is the mean over the global batch: average the ranks' micro-batch metrics."""
        keys = sorted(k for k, v in metrics.items() if torch.is_tensor(v))
        if not keys or self.world_size == 1:
            return metrics
        t = torch.stack([metrics[k].detach().float().reshape(()) for k in keys]).to(self.device)
        self._all_reduce(t).div_(self.world_size)
        return {**metrics, **{k: t[i] for i, k in enumerate(keys)}}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation loss of the raw and the EMA weights, with fixed timesteps/noise/conditioning draws.

        The first ``val_batches`` micro-batches of the validation set are dealt round-robin to the ranks
        (batch i to rank i mod world size, with its own seeds, so the result does not depend on the world
        size) and the sums all-reduced; one process is the case world size 1. Under ZeRO-3 every rank
        runs the same number of forwards, padded with weight-0 batches."""
        if self.val_data is None or len(self.val_data) == 0:
            return {}
        batches = list(iter_batches(self.val_data, self.micro_batch, self.cfg.train.val_batches))
        per_rank = math.ceil(len(batches) / self.world_size)
        out = {}
        for name, module, collective in self._val_modules():
            was_training = module.training
            module.eval()
            total, n = 0.0, 0.0
            for j in range(per_rank):
                i = self.rank + j * self.world_size
                if i >= len(batches) and not collective:
                    break
                weight = 1.0 if i < len(batches) else 0.0
                raw = batches[min(i, len(batches) - 1)]
                g_cpu = torch.Generator().manual_seed(self.cfg.seed + 12345 + i)
                g_dev = torch.Generator(device=self.device).manual_seed(self.cfg.seed + 54321 + i)
                mb = self.batcher(raw, generator=g_cpu, augment=False).to(self.device)
                with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
                    loss, _ = module(mb.x0, mb.y0, mb.mask, mb.cond, generator=g_dev)
                total += float(loss) * len(mb) * weight
                n += len(mb) * weight
            module.train(was_training)
            t = self._all_reduce(torch.tensor([total, n], dtype=torch.float64, device=self.device))
            out[name] = float(t[0] / t[1]) if t[1] > 0 else float("nan")
        return out

    def check_quality(self) -> dict[str, Any]:
        """Sample-quality metrics of the EMA model (``quality.py``); rank 0 only, {} elsewhere or when off."""
        if not self.cfg.train.quality_every:
            return {}
        module = self.ema_module()  # every rank: gathers a sharded EMA
        if not self.is_main:
            return {}
        if self._monitor is None:
            from .quality import build_monitor

            self._monitor = build_monitor(self.cfg, self.val_data, self.spec, self.normalizer, self.scaler)
            if self._monitor is None:
                return {}
        q = self._monitor.evaluate(module)
        log.info("step %d quality: %s", self.state.step,
                 ", ".join(f"{k.split('/')[1]} {v:.3g}" for k, v in q.items()))
        return q

    # ------------------------------------------------------------------ checkpoints
    def inference_payload(self) -> dict[str, Any] | None:
        """What ``unimat sample`` loads: the EMA weights and everything to decode. Every rank calls it (a
        sharded EMA is gathered); rank 0 gets the payload, the others None."""
        diffusion = self.ema_module()
        if not self.is_main:
            return None
        return inference_payload(
            diffusion.denoiser,
            diffusion.config(),
            self.spec,
            self.normalizer,
            self.scaler,
            train_config=to_dict(self.cfg),
            step=self.state.step,
            weights="ema",
        )

    def save_checkpoint(self) -> str | None:
        return self.checkpointer.save(self) if self.checkpointer is not None else None

    def resume(self) -> None:
        """Resume through the checkpointer, once (``fit`` calls it; a caller may call it earlier)."""
        if not self._resume_done:
            self._resume_done = True
            if self.checkpointer is not None:
                self.checkpointer.resume(self)

    def resumed(self, message: str) -> None:
        """Called by a checkpointer after it restored the parts: the loss curve continues from this step."""
        self._iter = None
        log.info("rank %d %s", self.rank, message)
        if self.is_main and self.run_dir is not None:
            truncate_metrics(self.run_dir / "metrics.jsonl", self.state.step)

    # ------------------------------------------------------------------ the loop
    def _log(self, record: dict[str, Any]) -> None:
        if self.is_main and self.run_dir is not None:
            with open(self.run_dir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")
        if self.is_main and "loss" in record:
            for o in self.observers:
                o.on_log(self, record)

    def fit(self) -> TrainResult:
        c = self.cfg.train
        self.resume()
        bar = None
        if self.is_main and c.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=c.steps, initial=self.state.step, desc="train", dynamic_ncols=True)
        window: dict[str, float] = {}
        window_n, t_window = 0, time.perf_counter()
        last_ckpt_step, last_ckpt = -1, None
        val: dict[str, float] = {}
        t_last = time.perf_counter()
        try:
            while self.state.step < c.steps:
                m = self.train_step()
                now = time.perf_counter()
                self.state.seconds += now - t_last
                t_last = now
                for k, v in m.items():
                    window[k] = window.get(k, 0.0) + (float(v) if not torch.is_tensor(v) else v.detach())
                window_n += 1
                step = self.state.step
                if bar is not None:
                    bar.update(1)
                if step % c.log_every == 0 or step == c.steps:
                    elapsed = time.perf_counter() - t_window
                    rec = {k: float(v) / window_n for k, v in window.items()}
                    rec.update(step=step, samples_per_s=window_n * c.global_batch_size / max(elapsed, 1e-9),
                               train_seconds=round(self.state.seconds, 2))
                    if not math.isfinite(rec["loss"]):
                        raise FloatingPointError(f"training loss is {rec['loss']} at step {step}")
                    self.history.append(rec)
                    self._log(rec)
                    if bar is not None:
                        bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}")
                    window, window_n, t_window = {}, 0, time.perf_counter()
                if c.val_every and step % c.val_every == 0 and step < c.steps:
                    val = self.validate()
                    self._log({"step": step, **val})
                if c.quality_every and step % c.quality_every == 0 and step < c.steps:
                    q = self.check_quality()
                    if q:
                        self._log({"step": step, "train_seconds": round(self.state.seconds, 2), **q})
                    t_window += time.perf_counter() - t_last  # the check is neither training time
                    t_last = time.perf_counter()  # nor throughput
                if c.ckpt_every and step % c.ckpt_every == 0 and step < c.steps:
                    last_ckpt, last_ckpt_step = self.save_checkpoint(), step
            val = self.validate()
            if val:
                self._log({"step": self.state.step, **val})
            q = self.check_quality() if c.quality_every else {}
            if q:
                self._log({"step": self.state.step, "train_seconds": round(self.state.seconds, 2), **q})
            if last_ckpt_step != self.state.step:
                last_ckpt = self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
        if self.is_main and self.run_dir is not None:
            from .plots import plot_metrics

            plot_metrics(self.run_dir / "metrics.jsonl", self.run_dir / "loss.png")
        first = self.history[0]["loss"] if self.history else float("nan")
        last = self.history[-1]["loss"] if self.history else float("nan")
        return TrainResult(
            steps=self.state.step,
            first_loss=first,
            last_loss=last,
            val_loss=val.get("val/loss_ema"),
            checkpoint=last_ckpt,
            inference_checkpoint=f"{last_ckpt}/inference.pt" if last_ckpt else None,
            history=self.history,
        )


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after ``step`` by a run that died before its next checkpoint."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    path.write_text("".join(ln + "\n" for ln in keep))
