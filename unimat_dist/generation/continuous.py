"""Step-level ("continuous") batching of generation jobs: requests join and leave a running denoising loop.

``run_jobs`` runs a fixed set of jobs to completion, one loop per (sampler, steps, eta) group: a request
that arrives while a loop runs waits for the whole loop. With closed-loop clients against one device
that settles into two alternating half-size batches (measured: 16 requests per run at 32 clients), and a
batch of 16 costs ~25 % more per crystal than one of 32 on a CPU. ``ContinuousSampler`` instead keeps
one loop running: every network evaluation takes the rows of all active jobs, each at its *own*
timestep (the U-Net takes one t per row); new jobs are admitted at the next step boundary and a job
leaves as soon as its last step is done. So the batch stays full while requests keep coming, and jobs
with different samplers, step counts and DDIM eta share every evaluation.

Each job is exactly the reverse process of ``diffusion.samplers.sample`` for its rows: the same
constraints, classifier-free guidance, DDIM/DDPM updates (per-row coefficient vectors instead of scalars),
and its own random stream (``torch.Generator`` seeded with the job's seed, drawn in the same order as
``RowGenerators``), so a job's crystals equal those of ``run_jobs([job])`` up to the float rounding of
batched kernels, whatever it shares the device with (``tests/test_continuous_batching.py``).

**Fair sharing of an evaluation**. On a CPU an evaluation costs roughly in proportion to its
rows (released Perov-5 model, 1 thread: 2.5 ms at 1 row, 5.2 ms at 8, 19 ms at 64), and every job in the
loop pays for every row of every evaluation it is in. Without a limit, a one-crystal DDIM-20 request that
joins a 64-crystal DDPM-1000 request runs each of its 20 steps at the 65-row price: admitted at once, but
many times slower. So while jobs share the loop, a job advances at most ``share_rows(jobs)`` =
max(``share_rows``, rows of the smallest job in the loop) of its rows per evaluation; a larger job's
step is spread over consecutive evaluations (its rows are independent; its ancestral noise is drawn once,
when its step starts, in the order ``sample`` draws it, so its crystals do not change). That is processor
sharing in rows: every job gets the same rows per evaluation, the smallest one all of its rows, so a job
of at most that many rows finishes in exactly its own step count of evaluations after admission, and a
large job is never starved (it advances at every evaluation). The floor ``share_rows`` keeps a large
job's evaluations from becoming too small to be efficient; a job alone in the loop is never split.
``share_rows=None`` turns the limit off (every job advances all its rows at every evaluation); "auto"
(the default) picks the floor by the device (``SHARE_ROWS_AUTO``).

Plain torch and threads (no Ray): one worker thread owns the device; ``submit`` is thread-safe and
``generate`` is its asyncio form (the Ray Serve replica uses it).
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from unimat_dist.diffusion.guidance import guided_eps, guided_rows, paired_condition
from unimat_dist.diffusion.samplers import RowCoefficients, SampleOutput, constraint_masks, reverse_plan, reverse_step
from unimat_dist.model import Condition
from unimat_dist.inference import GeneratedBatch, StructureGenerator

from .jobs import GenerationJob, job_condition

log = logging.getLogger(__name__)

# Rows per network evaluation a job is guaranteed while it shares the loop (module docstring), by device
# type, for ``share_rows="auto"``. CPU: an 8-row evaluation costs ~2x a 1-row one (released Perov-5 model,
# 1 thread), so a small job next to a large one runs at about half its speed alone instead of ~8x slower,
# while the large job's rows still cost ~2x less each than at batch 1. GPU: a small model's evaluation is
# launch-bound up to hundreds of rows (NOTES-stack), so splitting a 64-row job would cost it several times
# its time and gain the small job nothing; 64 splits only what is larger than a maximal request (not
# measured on a GPU yet). Other devices: the CPU value.
SHARE_ROWS_AUTO = {"cpu": 8, "cuda": 64}


def resolve_share_rows(share_rows: int | str | None, device) -> int | None:
    """The floor ``ContinuousSampler`` runs with on ``device``: ``share_rows``, or for "auto" ``SHARE_ROWS_AUTO``."""
    if share_rows == "auto":
        return SHARE_ROWS_AUTO.get(torch.device(device).type, SHARE_ROWS_AUTO["cpu"])
    return share_rows


@dataclass
class JobStats:
    """How one job ran: seconds from admission to its last step, and the most requests / rows that shared
    one of its network evaluations (the job's "batch"); ``evaluations`` counts the network evaluations it
    took part in (``steps`` of them unless its steps were spread over several while it shared the loop)."""

    seconds: float = 0.0
    peak_requests: int = 0
    peak_rows: int = 0
    steps: int = 0
    evaluations: int = 0


Callback = Callable[[GeneratedBatch | None, JobStats, BaseException | None], None]


class JobCancelled(Exception):
    """The job was cancelled (``ContinuousSampler.cancel``) before its last step."""


@dataclass(eq=False)
class _Active:
    """A queued or admitted job; the tensors are filled by ``_start`` on admission."""

    ticket: int
    job: GenerationJob
    callback: Callback
    schedule: list[tuple] = field(default_factory=list)  # the job's network evaluations (``reverse_plan``)
    generator: torch.Generator | None = None
    x: torch.Tensor | None = None  # (n, L, H, W, 3) float32, model space
    y: torch.Tensor | None = None  # (n, D)
    cond: Condition | None = None
    w: torch.Tensor | None = None  # (n,)
    allowed: torch.Tensor | None = None  # (n, L, H, W) bool
    exact: torch.Tensor | None = None  # (n, L, H, W) bool
    i: int = 0  # index of the next step in ``schedule``
    lo: int = 0  # rows [0, lo) have already taken step ``i`` (the step is spread over evaluations)
    zx: torch.Tensor | None = None  # the ancestral draws of step ``i`` (drawn when it starts), or None
    zy: torch.Tensor | None = None
    started: float = field(default_factory=time.perf_counter)
    stats: JobStats = field(default_factory=JobStats)

    @property
    def n(self) -> int:
        return self.job.num_samples


class SamplerBase:
    """What the service needs of a running loop: ``submit``/``cancel`` and the asyncio ``generate`` on top
    (``ContinuousSampler`` in a thread, ``engine_process.ProcessSampler`` in a child process). Both take
    the same limits, sharing policy and metric hooks (see ``ContinuousSampler``)."""

    def __init__(self, max_requests: int, max_rows: int, on_admit: Callable[[int], None] | None,
                 on_step: Callable[[int, int, float], None] | None, share_rows: int | str | None = "auto"
                 ) -> None:
        if max_requests < 1 or max_rows < 1:
            raise ValueError(f"max_requests and max_rows must be >= 1, got {max_requests}, {max_rows}")
        if share_rows not in (None, "auto") and (not isinstance(share_rows, int) or share_rows < 1):
            raise ValueError(f"share_rows must be an integer >= 1, 'auto' or None, got {share_rows!r}")
        self.max_requests, self.max_rows = int(max_requests), int(max_rows)
        self.share_rows = share_rows
        self.on_admit, self.on_step = on_admit, on_step

    @property
    def pid(self) -> int:
        """The process that runs the loop."""
        return os.getpid()

    def submit(self, job: GenerationJob, callback: Callback) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def cancel(self, ticket: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def generate(self, job: GenerationJob, on_submit: Callable[[int], None] | None = None
                       ) -> tuple[GeneratedBatch, JobStats]:
        """``submit`` for asyncio: the job's raw batch (decode with ``g.to_structures``) and its stats.
        ``on_submit(ticket)`` is called once the job is queued; cancelling the awaiting task cancels the job;
        a job cancelled through its ticket raises ``JobCancelled``."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def settle(batch, stats, error) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result((batch, stats))

        ticket = self.submit(job, lambda b, s, e: loop.call_soon_threadsafe(settle, b, s, e))
        if on_submit is not None:
            on_submit(ticket)
        try:
            return await future
        except asyncio.CancelledError:  # the caller went away (e.g. the HTTP client disconnected)
            self.cancel(ticket)
            raise


class ContinuousSampler(SamplerBase):
    """One running denoising loop on ``g``'s device that jobs join and leave at step boundaries.

    ``max_requests`` bounds the jobs in the loop (1 = one request at a time, the unbatched baseline) and
    ``max_rows`` its rows (device memory); a job with more rows than ``max_rows`` runs alone. Jobs are
    admitted in arrival order; a job that does not fit waits (later, smaller jobs do not overtake it).
    ``share_rows`` (rows; "auto" = ``SHARE_ROWS_AUTO`` for ``g``'s device, None = unlimited): while jobs
    share the loop, each advances at most max(share_rows, rows of the smallest job) rows per evaluation
    (module docstring), so one evaluation holds at most ``max_requests`` times that many rows.
    ``on_admit(num_jobs)`` is called for every group of jobs admitted together, ``on_step(rows, jobs,
    seconds)`` after every network evaluation (metrics).
    """

    def __init__(self, g: StructureGenerator, *, max_requests: int = 32, max_rows: int = 512,
                 share_rows: int | str | None = "auto", on_admit: Callable[[int], None] | None = None,
                 on_step: Callable[[int, int, float], None] | None = None, name: str = "unimat-sampling") -> None:
        super().__init__(max_requests, max_rows, on_admit, on_step, share_rows)
        self.share_rows = resolve_share_rows(share_rows, g.device)
        self.g = g
        self._pending: deque[tuple[int, GenerationJob, Callback]] = deque()
        self._tickets = itertools.count()
        self._active: list[_Active] = []
        # tensors of the current evaluation's rows, rebuilt when they change; "plan" is their key
        self._batch: dict | None = None
        self._cv = threading.Condition()
        self._closed = False
        self._cancelled: set[int] = set()  # tickets of jobs to drop at the next step boundary
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        d = g.diffusion
        self._abar = d.alphas_cumprod_f64
        self._amp = (lambda: torch.autocast(g.device.type, dtype=g.autocast_dtype)) if g.autocast_dtype is not None \
            else contextlib.nullcontext

    # ------------------------------------------------------------------ public
    def submit(self, job: GenerationJob, callback: Callback) -> int:
        """Queue a prepared job; ``callback(batch, stats, error)`` runs on the worker thread when it is done.
        Returns the job's ticket (for ``cancel``)."""
        if job.condition is None:
            raise ValueError("the job was not prepared (prepare_job attaches its condition)")
        with self._cv:
            if self._closed:
                raise RuntimeError("the sampler is closed")
            ticket = next(self._tickets)
            self._pending.append((ticket, job, callback))
            self._cv.notify()
        return ticket

    def cancel(self, ticket: int) -> None:
        """Drop a queued or running job at the next step boundary (its callback gets ``JobCancelled``);
        the device stops spending evaluations on it. A job that already finished is unaffected."""
        with self._cv:
            self._cancelled.add(int(ticket))
            self._cv.notify()

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop after the jobs already admitted or queued are done."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """Whether the worker thread runs (it only stops after ``close``)."""
        return self._thread.is_alive()

    @property
    def load(self) -> tuple[int, int]:
        """(active jobs, queued jobs)."""
        with self._cv:
            return len(self._active), len(self._pending)

    # ------------------------------------------------------------------ worker
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._active and not self._closed:
                    self._cv.wait()
                if self._closed and not self._pending and not self._active:
                    return
                dropped = self._drop_cancelled_locked()
                admitted = self._admit_locked()
            for a in dropped:
                self._finish(a, None, JobCancelled(f"job (seed {a.job.seed}) cancelled after {a.stats.steps} steps"))
            for a in admitted:
                try:
                    self._start(a)
                except Exception as exc:  # this job only (e.g. a condition the device cannot take)
                    self._finish(a, None, exc)
            try:
                if admitted and self.on_admit is not None:
                    self.on_admit(len(admitted))
                if self._active:
                    self._step()
            except Exception as exc:  # a device or model failure: every job in the loop gets it
                log.exception("sampling step failed; failing %d jobs", len(self._active))
                for a in self._active:
                    self._finish(a, None, exc)
                self._active, self._batch = [], None

    def _drop_cancelled_locked(self) -> list[_Active]:
        """Remove the cancelled jobs from the queue and the loop; the caller holds the lock."""
        if not self._cancelled:
            return []
        dropped = [a for a in self._active if a.ticket in self._cancelled]
        if dropped:
            self._active = [a for a in self._active if a.ticket not in self._cancelled]
            self._batch = None
        kept: deque = deque()
        for ticket, job, callback in self._pending:
            if ticket in self._cancelled:
                dropped.append(_Active(ticket, job, callback))
            else:
                kept.append((ticket, job, callback))
        self._pending = kept
        self._cancelled.clear()  # tickets of finished jobs: nothing left to drop
        return dropped

    def _admit_locked(self) -> list[_Active]:
        """Pop the queued jobs that fit (in order); the caller holds the lock."""
        rows = sum(a.n for a in self._active)
        jobs = len(self._active)
        admitted: list[_Active] = []
        while self._pending and jobs < self.max_requests:
            ticket, job, callback = self._pending[0]
            if (jobs or admitted) and rows + job.num_samples > self.max_rows:
                break
            self._pending.popleft()
            admitted.append(_Active(ticket, job, callback))
            rows, jobs = rows + job.num_samples, jobs + 1
        return admitted

    def _start(self, a: _Active) -> None:
        """Initial state of an admitted job (its first draws from its own generator, like ``sample``)."""
        g, job, device = self.g, a.job, self.g.device
        a.schedule = reverse_plan(g.diffusion.timesteps, job.sampler, job.steps, job.eta, job.noise_scale, job.restart)
        a.generator = torch.Generator(device=device)
        a.generator.manual_seed(int(job.seed))
        a.cond = job_condition(job).to(device)
        a.w = job.guidance.to(torch.float32).expand(job.num_samples).contiguous().to(device)
        a.allowed, a.exact = constraint_masks(a.cond, g.diffusion.allowed_cells)
        L, H, W = a.cond.composition.shape[1:]
        a.x = torch.randn((job.num_samples, L, H, W, g.diffusion.space.channels), device=device,
                          generator=a.generator)
        a.y = torch.randn((job.num_samples, g.diffusion.denoiser.lattice_dim), device=device, generator=a.generator)
        a.started = time.perf_counter()
        self._active.append(a)
        self._batch = None

    def _plan(self) -> list[tuple[_Active, int, int]]:
        """The rows [lo, hi) of every active job that the next evaluation advances: all the rows left in its
        step when it is alone (or without a share limit), else at most max(share_rows, rows of the smallest
        job) of them -- equal shares, so every job advances at every evaluation (module docstring)."""
        act = self._active
        if self.share_rows is None or len(act) == 1:
            return [(a, a.lo, a.n) for a in act]
        share = max(self.share_rows, min(a.n for a in act))
        return [(a, a.lo, min(a.n, a.lo + share)) for a in act]

    def _membership(self, plan: list[tuple[_Active, int, int]]) -> dict:
        """Condition, guidance and constraint tensors of the plan's rows (cached while the plan's rows stay
        the same: jobs that are not split keep one plan from admission to their last step)."""
        key = tuple((a.ticket, lo, hi) for a, lo, hi in plan)
        if self._batch is None or self._batch["plan"] != key:
            cond = Condition.cat([a.cond[lo:hi] for a, lo, hi in plan])
            w = torch.cat([a.w[lo:hi] for a, lo, hi in plan])
            rows = guided_rows(cond, w)
            self._batch = {
                "plan": key, "cond": cond, "w": w, "rows": rows,
                "paired": paired_condition(cond, rows) if rows.numel() else None,
                "allowed": torch.cat([a.allowed[lo:hi] for a, lo, hi in plan]),
                "exact": torch.cat([a.exact[lo:hi] for a, lo, hi in plan]),
            }
        return self._batch

    def _step(self) -> None:
        """One network evaluation of the rows ``_plan`` picks, each at its job's timestep, and the update."""
        t0 = time.perf_counter()
        plan, device = self._plan(), self.g.device
        m = self._membership(plan)
        x, y = torch.cat([a.x[lo:hi] for a, lo, hi in plan]), torch.cat([a.y[lo:hi] for a, lo, hi in plan])
        c = RowCoefficients.build([(*a.schedule[a.i], hi - lo) for a, lo, hi in plan], self._abar, device)
        start = 0
        for a, lo, hi in plan:
            if lo == 0:  # the step starts: its ancestral draws for all the job's rows, in ``sample``'s order
                a.zx = a.zy = None  # (the job's own stream: drawing them before the evaluation changes nothing)
                if float(c.sigma[start]) > 0:
                    a.zx = torch.randn(a.x.shape, device=device, generator=a.generator)
                    a.zy = torch.randn(a.y.shape, device=device, generator=a.generator)
            start += hi - lo
        with torch.no_grad(), self._amp():
            ex, ey = guided_eps(self.g.diffusion.denoiser, x, y, c.t, m["cond"], m["w"], m["rows"], m["paired"])
        sizes = [hi - lo for _, lo, hi in plan]
        zx = zy = None
        if any(a.zx is not None for a, _, _ in plan):  # rows without noise get zeros (sigma = 0 there)
            zx, zy = torch.zeros_like(x), torch.zeros_like(y)
            start = 0
            for (a, lo, hi), size in zip(plan, sizes):
                if a.zx is not None:
                    zx[start:start + size] = a.zx[lo:hi]
                    zy[start:start + size] = a.zy[lo:hi]
                start += size
        with torch.no_grad():
            xn, yn = reverse_step(self.g.diffusion.space, x, y, ex, ey, c, m["allowed"], m["exact"], zx, zy)
        rows, jobs = x.shape[0], len(plan)
        done, keep = [], []
        for (a, lo, hi), xa, ya in zip(plan, xn.split(sizes), yn.split(sizes)):
            if lo == 0 and hi == a.n:
                a.x, a.y = xa, ya
            else:  # part of the job's rows: the others still hold their values before this step
                a.x[lo:hi], a.y[lo:hi] = xa, ya
            a.stats.evaluations += 1
            a.stats.peak_requests = max(a.stats.peak_requests, jobs)
            a.stats.peak_rows = max(a.stats.peak_rows, rows)
            if hi < a.n:  # the step goes on at the next evaluation
                a.lo = hi
                keep.append(a)
                continue
            a.lo, a.zx, a.zy = 0, None, None
            a.i += 1
            a.stats.steps += 1
            (done if a.i >= len(a.schedule) else keep).append(a)
        if done:
            self._active, self._batch = keep, None
        if self.on_step is not None:
            self.on_step(rows, jobs, time.perf_counter() - t0)
        for a in done:
            out = SampleOutput(self.g.diffusion.space.from_diffusion(a.x.float()), a.y.float(), a.allowed, a.exact)
            try:
                batch = self.g.finish(out)
            except Exception as exc:  # noqa: BLE001 - reported to the job's caller
                self._finish(a, None, exc)
            else:
                self._finish(a, batch, None)

    @staticmethod
    def _finish(a: _Active, batch: GeneratedBatch | None, error: BaseException | None) -> None:
        a.stats.seconds = time.perf_counter() - a.started
        try:
            a.callback(batch, a.stats, error)
        except Exception:  # a callback must not stop the loop
            log.exception("job callback failed")
