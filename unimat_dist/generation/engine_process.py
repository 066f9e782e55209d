"""The running denoising loop in a child process: ``ProcessSampler``, ``ContinuousSampler``'s interface with
the loop in its own interpreter.

Why: the loop is a Python thread issuing a few hundred small tensor operations per step, and every one
of them re-acquires the GIL when its kernel returns. In a Serve replica the same process parses HTTP
requests, validates them, decodes crystals and formats CIF/JSON on other threads; whenever one of them
holds the GIL the loop waits for it (the "convoy": a thread that gives up the GIL for a kernel gets it
back only when the holder blocks or its switch interval ends). Measured on a 2-core CPU, bf16, 32
closed-loop one-crystal jobs: the bare loop makes 27.7 crystals/s; 5 ms of Python per finished job on
the requesters' threads (about what decoding plus a response costs) takes it to 22.1, 15 ms to 20.7 --
the Serve replica with the in-process loop made 19-22. On a GPU the loop is launch-bound and loses the
same way. A child process has its own GIL: the parent's threads cost it nothing but a core.

Protocol (one duplex pipe, messages pickled with the standard pickler, so tensors travel by value and
no shared-memory handles are involved):

    parent -> child   ("submit", ticket, job) | ("cancel", ticket) | ("close",)
    child -> parent   ("ready", info) | ("fatal", traceback) | ("admit", n) | ("step", rows, jobs, s)
                      | ("done", ticket, arrays | None, stats, error | None)

The child loads the model itself (``open_generator`` on the exact checkpoint file the parent resolved),
runs a ``ContinuousSampler`` and decodes finished jobs to arrays (``StructureGenerator.finish``); the
parent rebuilds ``GeneratedBatch`` and decodes structures with its own CPU copy of the generator's
metadata (``to_structures`` needs no weights). If the child dies, every outstanding job fails with an
error naming its exit code and ``alive`` turns false (a Serve health check then replaces the replica).
"""
from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import pickle
import threading
import time
import traceback
from typing import Any, Callable

import numpy as np
import torch

from unimat_dist.inference import GeneratedBatch

from .continuous import Callback, JobStats, SamplerBase
from .jobs import GenerationJob

log = logging.getLogger(__name__)


def _dumps(msg: tuple) -> bytes:
    return pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)


def _portable_error(error: BaseException | None) -> BaseException | None:
    """``error`` if it pickles, else a RuntimeError carrying its type and message."""
    if error is None:
        return None
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - any unpicklable exception
        return RuntimeError(f"{type(error).__name__}: {error}")


def _batch_arrays(batch: GeneratedBatch | None) -> dict[str, np.ndarray] | None:
    if batch is None:
        return None
    return {"positions": batch.positions, "mask": batch.mask, "lattice": batch.lattice}


def _batch_from_arrays(a: dict[str, np.ndarray] | None) -> GeneratedBatch | None:
    if a is None:
        return None
    return GeneratedBatch(a["positions"], a["mask"], a["lattice"])


def _child_main(conn, source: dict[str, Any], max_requests: int, max_rows: int, torch_threads: int | None,
                share_rows: int | str | None = "auto") -> None:
    """The child: load the model, run the loop, serve the pipe until ``close`` or the parent goes away."""
    from unimat_dist.generation.continuous import ContinuousSampler
    from unimat_dist.generation.model_source import open_generator

    send_lock = threading.Lock()

    def send(msg: tuple) -> None:
        data = _dumps(msg)
        with send_lock:
            conn.send_bytes(data)

    try:
        from unimat_dist.cpu_threads import configure

        configure(int(torch_threads) if torch_threads else None, what="sampling engine process")
        g = open_generator(**source)
        engine = ContinuousSampler(g, max_requests=max_requests, max_rows=max_rows, share_rows=share_rows,
                                   on_admit=lambda n: send(("admit", n)),
                                   on_step=lambda rows, jobs, s: send(("step", rows, jobs, s)))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send_bytes(_dumps(("fatal", traceback.format_exc())))
        conn.close()
        return
    send(("ready", {"device": str(g.device), "precision": g.precision, "torch_threads": torch.get_num_threads(),
                    "share_rows": engine.share_rows}))
    tickets: dict[int, int] = {}  # parent ticket -> engine ticket

    def done(parent_ticket: int):
        def callback(batch, stats: JobStats, error) -> None:
            tickets.pop(parent_ticket, None)
            try:
                send(("done", parent_ticket, _batch_arrays(batch), stats, _portable_error(error)))
            except (OSError, EOFError):  # the parent is gone; the main loop ends on its own
                pass
        return callback

    parent_gone = False
    try:
        while True:
            try:
                msg = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):  # the parent exited (or was killed): nobody to deliver to
                parent_gone = True
                break
            if msg[0] == "submit":
                _, ticket, job = msg
                try:
                    tickets[ticket] = engine.submit(job, done(ticket))
                except Exception as exc:  # noqa: BLE001 - this job only
                    done(ticket)(None, JobStats(), exc)
            elif msg[0] == "cancel":
                if (t := tickets.get(msg[1])) is not None:
                    engine.cancel(t)
            elif msg[0] == "close":
                break
    finally:
        if parent_gone:  # free the device now (a replacement replica may be loading onto it)
            os._exit(0)
        engine.close(timeout=60.0)
        conn.close()


class ProcessSampler(SamplerBase):
    """A ``ContinuousSampler`` running in a child process (``spawn``), driven through the same interface:
    ``submit(job, callback) -> ticket``, ``cancel``, ``generate`` (asyncio), ``alive``, ``load``, ``close``.

    ``share_rows``: the child loop's sharing policy (``ContinuousSampler``; "auto" is resolved for the
    child's device, ``info["share_rows"]`` says to what).
    ``source`` is ``open_generator``'s keyword arguments (``checkpoint``, ``storage_options``, ``device``,
    ``precision``) for the child; pass the resolved checkpoint file so both processes load the same
    weights. Callbacks (job results, ``on_admit``, ``on_step``) run on the parent's reader thread.
    Construction blocks until the child has loaded the model (``start_timeout`` seconds) and raises
    ``RuntimeError`` with the child's traceback if it could not.
    """

    def __init__(self, source: dict[str, Any], *, max_requests: int = 32, max_rows: int = 512,
                 share_rows: int | str | None = "auto", torch_threads: int | None = None,
                 on_admit: Callable[[int], None] | None = None,
                 on_step: Callable[[int, int, float], None] | None = None, start_timeout: float = 600.0,
                 name: str = "unimat-sampling") -> None:
        super().__init__(max_requests, max_rows, on_admit, on_step, share_rows)
        ctx = multiprocessing.get_context("spawn")  # never fork a process holding threads / a CUDA context
        if not torch_threads:  # decided here, where Ray's reservation of a Serve replica is known
            from unimat_dist.cpu_threads import resolve

            torch_threads = resolve(None, what="sampling engine process")
        self._conn, child = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(target=_child_main, name=name, daemon=True,
                                 args=(child, dict(source), self.max_requests, self.max_rows, torch_threads,
                                       self.share_rows))
        t0 = time.perf_counter()
        self._proc.start()
        child.close()  # the child holds the only other end: its exit shows up here as EOF
        try:
            if not self._conn.poll(start_timeout):
                raise RuntimeError(f"the sampling process did not load the model within {start_timeout:.0f} s")
            kind, payload = pickle.loads(self._conn.recv_bytes())
        except (EOFError, OSError):
            kind, payload = "fatal", f"the sampling process exited during start-up (exit code {self._wait_exit()})"
        except BaseException:
            self._kill()
            raise
        if kind != "ready":
            self._kill()
            raise RuntimeError(f"the sampling process could not start:\n{payload}")
        self.info: dict[str, Any] = payload  # device, precision, torch_threads, share_rows of the child
        self.start_seconds = time.perf_counter() - t0
        self._lock = threading.Lock()  # pipe writes, the callback table, the state below
        self._callbacks: dict[int, Callback] = {}
        self._tickets = itertools.count()
        self._active = 0  # jobs in the child's last network evaluation
        self._closed = False
        self._dead: str | None = None  # why the child is gone
        self._reader = threading.Thread(target=self._read, name=f"{name}-reader", daemon=True)
        self._reader.start()
        log.info("sampling process %d ready in %.1f s (%s, %s)", self._proc.pid, self.start_seconds,
                 self.info["device"], self.info["precision"])

    # ------------------------------------------------------------------ public
    def submit(self, job: GenerationJob, callback: Callback) -> int:
        if job.condition is None:
            raise ValueError("the job was not prepared (prepare_job attaches its condition)")
        with self._lock:
            if self._closed:
                raise RuntimeError("the sampler is closed")
            if self._dead is not None:
                raise RuntimeError(self._dead)
            ticket = next(self._tickets)
            self._callbacks[ticket] = callback
            try:
                self._conn.send_bytes(_dumps(("submit", ticket, job)))
            except (OSError, EOFError) as exc:
                self._callbacks.pop(ticket, None)
                raise RuntimeError(f"the sampling process is gone ({exc})") from None
        return ticket

    def cancel(self, ticket: int) -> None:
        with self._lock:
            if ticket in self._callbacks and self._dead is None:
                try:
                    self._conn.send_bytes(_dumps(("cancel", int(ticket))))
                except (OSError, EOFError):
                    pass  # the reader fails the job

    def close(self, timeout: float | None = 10.0) -> None:
        """Finish the jobs already submitted, then stop the child (killed after ``timeout`` seconds)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._dead is None:
                try:
                    self._conn.send_bytes(_dumps(("close",)))
                except (OSError, EOFError):
                    pass
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._kill()
        self._reader.join(timeout)

    @property
    def alive(self) -> bool:
        return self._dead is None and self._proc.is_alive() and self._reader.is_alive()

    @property
    def load(self) -> tuple[int, int]:
        """(jobs in the last network evaluation, the others submitted and not finished)."""
        with self._lock:
            outstanding = len(self._callbacks)
        active = min(self._active, outstanding)
        return active, outstanding - active

    @property
    def pid(self) -> int:
        return self._proc.pid

    # ------------------------------------------------------------------ reader
    def _read(self) -> None:
        try:
            while True:
                msg = pickle.loads(self._conn.recv_bytes())
                kind = msg[0]
                if kind == "done":
                    _, ticket, arrays, stats, error = msg
                    with self._lock:
                        callback = self._callbacks.pop(ticket, None)
                    if callback is not None:
                        self._call(callback, _batch_from_arrays(arrays), stats, error)
                elif kind == "step":
                    self._active = msg[2]
                    if self.on_step is not None:
                        self._safe(self.on_step, *msg[1:])
                elif kind == "admit" and self.on_admit is not None:
                    self._safe(self.on_admit, msg[1])
        except (EOFError, OSError):
            pass
        except Exception:  # a message that cannot be read: treat the child as lost
            log.exception("sampling process: unreadable message")
        code = self._wait_exit()
        with self._lock:
            why = "the sampler is closed" if self._closed and code == 0 else \
                f"the sampling process (pid {self._proc.pid}) exited with code {code}"
            self._dead = why
            orphans, self._callbacks = list(self._callbacks.values()), {}
        if orphans:
            log.error("%s; failing %d jobs", why, len(orphans))
        for callback in orphans:
            self._call(callback, None, JobStats(), RuntimeError(why))

    def _wait_exit(self) -> int | None:
        self._proc.join(5.0)
        return self._proc.exitcode

    def _kill(self) -> None:
        if self._proc.is_alive():
            self._proc.kill()
        self._proc.join(5.0)

    @staticmethod
    def _call(callback: Callback, batch, stats, error) -> None:
        try:
            callback(batch, stats, error)
        except Exception:  # a callback must not stop the reader
            log.exception("job callback failed")

    @staticmethod
    def _safe(fn, *args) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("sampler hook failed")
