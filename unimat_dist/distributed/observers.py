"""The fault-injection hook of the fault-tolerance tests, a trainer observer (``training.loop.TrainObserver``)
of a Ray Train worker (rank 0's reporting is ``observability.training.RankZeroReporting``)."""
from __future__ import annotations

import logging
import os
import signal
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class FailureInjection:
    """Trainer observer for the fault-tolerance tests (``distributed.fail_at``): the chosen rank SIGKILLs
    itself after the chosen step, at most ``times`` times per run (markers in the run's storage)."""

    def __init__(self, fail_at, marker_fs, marker_dir: str | None) -> None:
        self.fail_at, self.marker_fs, self.marker_dir = fail_at, marker_fs, marker_dir

    def on_step(self, trainer, seconds: float, data_wait: float) -> None:
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

    def on_log(self, trainer, record: dict[str, Any]) -> None:
        pass
