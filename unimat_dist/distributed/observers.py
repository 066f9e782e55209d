"""Trainer observers of a Ray Train worker (``training.loop.TrainObserver``): rank 0's metrics, console
records and log line; the fault-injection hook of the fault-tolerance tests."""
from __future__ import annotations

import logging
import os
import signal
import uuid
from pathlib import Path
from typing import Any

from unimat_dist.training.loop import Trainer

from .metrics import TrainMetrics

log = logging.getLogger(__name__)


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
