"""A process-pool map with a progress bar, for the slow per-structure steps (CrystalNN fingerprints,
relaxations). Workers are spawned (not forked) because torch and BLAS thread pools do not survive a fork.
Small inputs run in-process: starting a worker costs a few seconds of imports.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Callable, Iterable, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)


def default_workers() -> int:
    """All CPUs this process may use: affinity, cgroup quota, Ray's reservation (``cpu_threads``); each
    worker runs one thread. ``UNIMAT_EVAL_WORKERS`` overrides (warned when it exceeds the usable CPUs)."""
    from unimat_dist.cpu_threads import usable_cpus

    usable = usable_cpus()
    env = os.environ.get("UNIMAT_EVAL_WORKERS")
    if env:
        if int(env) > usable:
            log.warning("UNIMAT_EVAL_WORKERS=%s > %d usable CPU(s): oversubscribed", env, usable)
        return max(1, int(env))
    return usable


def _limit_memory() -> None:
    """Cap a worker's heap (``UNIMAT_EVAL_WORKER_MEM_GB``, default 6) so that one pathological structure
    raises MemoryError in its own task instead of making the kernel OOM-kill processes on a shared machine."""
    import resource

    gb = float(os.environ.get("UNIMAT_EVAL_WORKER_MEM_GB", "6"))
    if gb <= 0:
        return
    limit = int(gb * (1 << 30))
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    except (ValueError, OSError):  # pragma: no cover - platform without RLIMIT_DATA
        pass


def _init_worker(threads: int) -> None:
    # One BLAS/torch thread per worker: the pool already uses every core.
    _limit_memory()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass


@contextlib.contextmanager
def _spawnable_main():
    """Hide a ``__main__.__file__`` that is not a real file (``python -`` / stdin, notebooks): spawned
    children would try to re-run it and die. Real scripts keep it (they are re-imported as usual)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    hide = path is not None and not os.path.exists(path)
    if hide:
        del main.__file__
    try:
        yield
    finally:
        if hide:
            main.__file__ = path


def parallel_map(
    fn: Callable[[T], R],
    items: Sequence[T] | Iterable[T],
    workers: int | None = None,
    desc: str = "",
    progress: bool = True,
    min_parallel: int = 32,
    chunksize: int | None = None,
) -> list[R]:
    """``[fn(x) for x in items]`` in order, over ``workers`` spawned processes with a tqdm bar.

    Runs in-process when ``workers <= 1`` or there are fewer than ``min_parallel`` items. ``fn`` must be
    a module-level function (or ``functools.partial`` of one) so that it pickles.
    """
    from tqdm.auto import tqdm

    items = list(items)
    workers = default_workers() if workers is None else max(1, int(workers))
    workers = min(workers, len(items)) if items else 1
    bar = tqdm(total=len(items), desc=desc, disable=not progress, mininterval=2.0)
    try:
        if workers <= 1 or len(items) < min_parallel:
            out = []
            for x in items:
                out.append(fn(x))
                bar.update(1)
            return out
        chunksize = chunksize or max(1, min(16, len(items) // (workers * 8)))
        log.info("%s: %d items on %d worker processes", desc or "parallel_map", len(items), workers)
        with _spawnable_main(), ProcessPoolExecutor(
            workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(1,)
        ) as ex:
            out = []
            for r in ex.map(fn, items, chunksize=chunksize):
                out.append(r)
                bar.update(1)
            return out
    finally:
        bar.close()
