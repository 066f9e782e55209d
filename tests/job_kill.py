"""Kill a job mid-way, as a crash would: shared by the ingest and batch-generation resume tests."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def kill_after_units(cmd: list[str], env: dict, log_path: Path, units: Path, min_units: int, pattern: str = "*",
                     timeout: float = 180) -> list[Path]:
    """Start ``cmd`` in its own session, SIGKILL the session once ``units`` holds ``min_units`` files
    matching ``pattern``, and return those files once the folder has stopped changing: Ray worker
    processes are not all in the killed session, and one may still commit the unit it was writing."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        try:
            while time.time() < deadline and proc.poll() is None:
                if units.is_dir() and len(list(units.glob(pattern))) >= min_units:
                    break
                time.sleep(0.02)
            assert proc.poll() is None, log_path.read_text()[-3000:]
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    done, stable_since = sorted(units.glob(pattern)), time.time()
    while time.time() - stable_since < 3 and time.time() < deadline + 30:
        time.sleep(0.2)
        now = sorted(units.glob(pattern))
        if now != done:
            done, stable_since = now, time.time()
    return done
