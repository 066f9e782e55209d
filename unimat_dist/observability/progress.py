"""Training progress of a ``trainer: ray`` run on the driver's console.

Ray Train runs the loop in worker processes; their logs reach the driver only with ``log_to_driver``
and, under ``ray job submit``, interleaved with every other worker's lines. Here rank 0 pushes one small
record per logging window (``train.log_every``) to a ``ProgressHub`` actor that the driver created
(fire-and-forget, never blocking a step), and a thread of the driver drains the hub once a second and
prints one line per record:

    [train] step 40/200 (20%) loss=0.7712 samples/s=61.3 ETA 0:00:52 restarts=0 workers=2

Every worker group that starts announces itself. A later group is either a *restart* (Ray Train's failure
handling replaced a group in which a worker failed) or an elastic *resize* (a healthy group was replaced
by a larger one because more workers fit). The workers cannot tell which; the Ray Train controller can:
``failure_callback`` (a ``ray.train.UserCallback`` on the controller) pushes a ``failure`` record to the
same hub when workers raise or die, so the driver prints

    [train] worker failure (rank 1): ActorDiedError: ...
    [train] restart 1: 2 worker(s) resumed at step 5

for a group that follows a failure, and

    [train] resized to 2 worker(s) (elastic), resumed at step 5

for one that does not. Only restarts count in ``restarts=``; resizes in ``resizes=``, shown once there was one.

The hub is an actor with ``num_cpus=0`` on the driver's node, owned by the driver: it outlives
worker-group restarts and dies with the driver.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any, TextIO

log = logging.getLogger(__name__)

PREFIX = "[train]"


class _Hub:
    """Actor body: numbered records, kept until the driver acknowledges them.

    ``drain(seen)`` drops the records numbered ``<= seen`` and returns the rest, so a drain whose reply
    the driver gave up on (a timeout under load) loses nothing: the next drain returns the same records.
    """

    def __init__(self) -> None:
        self.records: list[tuple[int, dict[str, Any]]] = []
        self.count = 0

    def push(self, record: dict[str, Any]) -> None:
        self.count += 1
        self.records.append((self.count, record))

    def drain(self, seen: int = 0) -> list[tuple[int, dict[str, Any]]]:
        self.records = [(n, r) for n, r in self.records if n > seen]
        return list(self.records)


def format_eta(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class ProgressPrinter:
    """Driver side: create the hub, print what rank 0 pushes (``start()`` ... ``close()``)."""

    def __init__(self, total_steps: int, global_batch: int, *, stream: TextIO | None = None,
                 interval_s: float = 1.0) -> None:
        self.total = int(total_steps)
        self.global_batch = int(global_batch)
        self.stream = stream
        self.interval = interval_s
        self.handle = None
        self.starts = 0  # worker groups started in this fit()
        self.restarts = 0  # groups started after a worker failure
        self.resizes = 0  # groups started by an elastic resize (no failure since the previous group)
        self._failed = False  # a failure record arrived since the last group started
        self.last: dict[str, Any] | None = None
        self.lines: list[str] = []
        self._attempt_first: tuple[int, float] | None = None  # (step, worker wall time) of this attempt
        self._seen = 0  # number of the last hub record handled
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # the polling thread and close() both poll

    # ------------------------------------------------------------------ lifecycle
    def start(self):
        """Create the hub actor and the polling thread; returns the hub's handle (for the workers)."""
        import ray

        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # on the driver's node: it lives as long as the driver, whichever worker node dies. A hard affinity:
        # with soft=True Ray 2.60 places a num_cpus=0 actor on any node when the driver's node has no CPUs
        # (a CPU-less head), and the hub then dies with that worker node
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.handle = ray.remote(num_cpus=0, max_restarts=0)(_Hub).options(scheduling_strategy=here).remote()
        self._thread = threading.Thread(target=self._run, name="unimat-train-progress", daemon=True)
        self._thread.start()
        return self.handle

    def close(self) -> None:
        """Print what is left and drop the hub."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.poll()
        if self.handle is not None:
            import ray

            try:
                ray.kill(self.handle)
            except Exception:  # noqa: BLE001 - the hub is gone already
                pass
            self.handle = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        if self.handle is None:
            return
        import ray

        with self._lock:
            try:
                records = ray.get(self.handle.drain.remote(self._seen), timeout=30)
            except Exception as exc:  # noqa: BLE001 - progress must never fail a run
                log.debug("progress hub not reachable: %s", exc)
                return
            for n, rec in records:
                if n > self._seen:
                    self._seen = n
                    self.handle_record(rec)

    # ------------------------------------------------------------------ formatting
    def handle_record(self, rec: dict[str, Any]) -> None:
        kind = rec.get("kind")
        if kind == "failure":
            self._failed = True
            ranks = ", ".join(str(r) for r in rec.get("ranks", [])) or "?"
            self._print(f"{PREFIX} worker failure (rank {ranks}): {rec.get('error', '?')}")
        elif kind == "start":
            self.starts += 1
            self._attempt_first = None
            step, world = int(rec.get("step", 0)), rec.get("world_size")
            if self.starts > 1 and self._failed:
                self.restarts += 1
                self._print(f"{PREFIX} restart {self.restarts}: {world} worker(s) resumed at step {step}")
            elif self.starts > 1:
                self.resizes += 1
                self._print(f"{PREFIX} resized to {world} worker(s) (elastic), resumed at step {step}")
            elif step > 0:
                self._print(f"{PREFIX} {world} worker(s) resumed the run at step {step}/{self.total}")
            else:
                self._print(f"{PREFIX} {world} worker(s) started, {self.total} steps")
            self._failed = False
        elif kind == "step":
            self.last = rec
            self._print(self.format_step(rec))

    def format_step(self, rec: dict[str, Any]) -> str:
        step, t = int(rec["step"]), float(rec.get("time", time.time()))
        sps = rec.get("samples_per_s")
        eta = None
        if self._attempt_first is None:
            self._attempt_first = (step, t)
        s0, t0 = self._attempt_first
        if step > s0 and t > t0:  # wall-clock rate of this attempt: includes checkpoints and validation
            eta = (self.total - step) * (t - t0) / (step - s0)
        elif sps:
            eta = (self.total - step) * self.global_batch / float(sps)
        pct = 100.0 * step / self.total if self.total else 100.0
        loss = rec.get("loss")
        loss_s = f"loss={float(loss):.4f}" if loss is not None else "loss=?"
        return (f"{PREFIX} step {step}/{self.total} ({pct:.0f}%) {loss_s} samples/s={float(sps or 0):.1f} "
                f"ETA {format_eta(eta)} restarts={self.restarts}{f' resizes={self.resizes}' if self.resizes else ''} "
                f"workers={rec.get('world_size', '?')}")

    def _print(self, line: str) -> None:
        self.lines.append(line)
        stream = self.stream or sys.stdout
        print(line, file=stream, flush=True)


class ProgressReporter:
    """Worker side (rank 0): push records to the driver's hub without waiting for it."""

    def __init__(self, handle, world_size: int) -> None:
        self.handle = handle
        self.world = world_size

    def _push(self, rec: dict[str, Any]) -> None:
        if self.handle is None:
            return
        try:
            self.handle.push.remote({**rec, "world_size": self.world, "time": time.time()})
        except Exception as exc:  # noqa: BLE001 - the driver may be gone; training goes on
            log.debug("progress hub not reachable: %s", exc)
            self.handle = None

    def started(self, step: int, resumes: int) -> None:
        self._push({"kind": "start", "step": int(step), "resumes": int(resumes)})

    def step(self, record: dict[str, Any]) -> None:
        self._push({"kind": "step", "step": int(record["step"]), "loss": float(record["loss"]),
                    "samples_per_s": float(record.get("samples_per_s") or 0.0), "lr": record.get("lr")})


def failure_callback(handle):
    """A ``ray.train.UserCallback`` (it runs in the Ray Train controller) that pushes one ``failure``
    record to the hub ``handle`` whenever workers raise or die: what tells a restart from a resize."""
    from ray.train import UserCallback

    class _FailureReporter(UserCallback):
        def after_exception(self, run_context, worker_exceptions) -> None:
            errors = [f"{type(e).__name__}: {e}" for _, e in sorted(worker_exceptions.items())]
            first = (errors[0].strip().splitlines() or ["?"])[0][:200] if errors else "?"
            try:
                handle.push.remote({"kind": "failure", "ranks": sorted(int(r) for r in worker_exceptions),
                                    "error": first, "time": time.time()})
            except Exception as exc:  # noqa: BLE001 - progress must never fail a run
                log.debug("progress hub not reachable: %s", exc)

    return _FailureReporter()


__all__ = ["ProgressPrinter", "ProgressReporter", "failure_callback", "format_eta"]
