"""How many CPU threads a ``unimat`` process uses: the CPUs it actually has, never more.

torch's default is one intra-op thread per CPU it *sees*; on a busy or restricted machine that
oversubscribes and OpenMP's barriers spin against the other work (a 2-core machine with other jobs:
``unimat sample`` 240 s with torch's default threads, 10.7 s with one thread). The policy, in one place:

    usable CPUs = min(CPU affinity, cgroup v2 ``cpu.max`` / v1 ``cfs_quota_us`` quota, Ray's CPUs of this
                  worker/actor)                                    -> :func:`usable_cpus`
    threads     = usable CPUs, less the CPUs other processes keep busy right now (sampled from
                  ``/proc/stat`` for 0.15 s; only where this process sees the whole machine), divided by
                  the processes that share them, at least 1       -> :func:`plan_threads`

An explicit setting (``--threads``, ``train.num_threads``, ``torch_threads=``, ``UNIMAT_THREADS``, or a
user-set ``OMP_NUM_THREADS``) is used as given, with a warning when threads x processes exceed the usable
CPUs. ``UNIMAT_THREADS=auto`` (default) applies the policy; ``UNIMAT_THREADS_LOAD=0`` ignores the load.

The ``unimat`` dispatcher calls :func:`configure` once before a command runs (it exports
``OMP_NUM_THREADS``/``MKL_NUM_THREADS``/``OPENBLAS_NUM_THREADS`` for torch/BLAS imported later and marks
them with ``UNIMAT_AUTO_THREADS`` so that Ray workers and pool workers know they are a default, not the
user's); worker processes (evaluation pools, Ray actors, the service's engine process) call
:func:`configure` with their own share.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
AUTO_MARK = "UNIMAT_AUTO_THREADS"  # set next to THREAD_ENV_VARS when the policy (not the user) chose them
USER_ENV = "UNIMAT_THREADS"  # "auto" (default) or a number
LOAD_ENV = "UNIMAT_THREADS_LOAD"  # "0": ignore other processes' load


# ---------------------------------------------------------------------------------------------- pure parts
def parse_cgroup_v2_cpu_max(text: str) -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD"); None when unlimited."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    quota = float(parts[0])
    period = float(parts[1]) if len(parts) > 1 else 100000.0
    return quota / period if quota > 0 and period > 0 else None


def parse_cgroup_v1_quota(quota_text: str, period_text: str) -> float | None:
    """CPUs allowed by cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; None when unlimited (-1)."""
    quota, period = float(quota_text.strip()), float(period_text.strip())
    return quota / period if quota > 0 and period > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def cgroup_cpu_limit(root: str | Path = "/sys/fs/cgroup", self_cgroup: str | Path = "/proc/self/cgroup") -> float | None:
    """The tightest CPU quota on this process's cgroup and its ancestors (v2), or of its v1 ``cpu``
    controller; None when there is none. ``root``/``self_cgroup`` are parameters for tests."""
    root = Path(root)
    limits: list[float] = []
    groups = (_read(Path(self_cgroup)) or "").splitlines()
    v2_rel = next((line.split(":", 2)[2] for line in groups if line.startswith("0::")), None)
    if (root / "cgroup.controllers").exists() or (root / "cpu.max").exists():  # v2 (unified)
        rel = Path((v2_rel or "/").lstrip("/"))
        for d in [root / rel, *[root / p for p in rel.parents]]:  # own group up to the (namespaced) root
            text = _read(d / "cpu.max")
            if text:
                q = parse_cgroup_v2_cpu_max(text)
                if q is not None:
                    limits.append(q)
    else:  # v1: the cpu controller, mounted as cpu, cpu,cpuacct or cpuacct,cpu
        v1_rel = next((line.split(":", 2)[2] for line in groups
                       if line.count(":") >= 2 and "cpu" in line.split(":", 2)[1].split(",")), "/")
        for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
            base = root / mount
            for d in (base / v1_rel.lstrip("/"), base):
                q_text, p_text = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
                if q_text and p_text:
                    q = parse_cgroup_v1_quota(q_text, p_text)
                    if q is not None:
                        limits.append(q)
    return min(limits) if limits else None


def parse_proc_stat(text: str) -> tuple[int, int]:
    """(busy, total) jiffies of the aggregate ``cpu`` line of ``/proc/stat`` (idle = idle + iowait)."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            v = [int(x) for x in line.split()[1:]]
            idle = v[3] + (v[4] if len(v) > 4 else 0)
            total = sum(v[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
            return total - idle, total
    raise ValueError("no aggregate 'cpu' line in /proc/stat")


def busy_between(before: tuple[int, int], after: tuple[int, int], n_cpus: int) -> float:
    """CPUs kept busy between two ``parse_proc_stat`` readings of a machine with ``n_cpus`` CPUs."""
    d_busy, d_total = after[0] - before[0], after[1] - before[1]
    return 0.0 if d_total <= 0 else max(0.0, min(1.0, d_busy / d_total)) * n_cpus


def plan_threads(usable: int, busy_elsewhere: float | None = None, processes: int = 1,
                 requested: int | None = None) -> tuple[int, str | None]:
    """(threads per process, warning or None): the policy without any I/O.

    ``requested`` (explicit) wins, with a warning when ``requested * processes > usable``; otherwise the
    usable CPUs less the ones other work keeps busy (rounded), shared by ``processes``, at least 1."""
    usable, processes = max(1, int(usable)), max(1, int(processes))
    if requested is not None and int(requested) > 0:
        requested = int(requested)
        if requested * processes > usable:
            who = f"{requested} threads x {processes} processes" if processes > 1 else f"{requested} threads"
            return requested, (f"{who} > {usable} usable CPU(s): oversubscribed, expect slowdowns "
                               f"(drop the setting to use the default, {max(1, usable // processes)})")
        return requested, None
    free = float(usable) - (busy_elsewhere or 0.0)
    free = max(1, min(usable, int(math.floor(free + 0.5))))
    return max(1, free // processes), None


# ---------------------------------------------------------------------------------------- machine reading
def affinity_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def ray_cpus() -> float | None:
    """CPUs Ray reserved for this worker/actor (None outside a Ray worker). Never imports Ray."""
    ray = sys.modules.get("ray")
    if ray is None:
        return None
    try:
        if not ray.is_initialized():
            return None
        ctx = ray.get_runtime_context()
        if getattr(ctx, "worker", None) is not None and ctx.worker.mode != getattr(ray, "WORKER_MODE", 1):
            return None  # the driver: Ray reserved nothing for it
        cpus = ctx.get_assigned_resources().get("CPU")
        return float(cpus) if cpus else None
    except Exception:  # noqa: BLE001 - an old/odd Ray: fall back to the machine's view
        return None


def usable_cpus() -> int:
    """CPUs this process may use: affinity, cgroup quota and Ray's reservation, the smallest (>= 1)."""
    n = float(affinity_cpus())
    for limit in (cgroup_cpu_limit(), ray_cpus()):
        if limit is not None:
            n = min(n, limit)
    return max(1, int(math.floor(n + 1e-9)))


def busy_elsewhere(usable: int, interval: float = 0.15) -> float | None:
    """CPUs other processes keep busy now, or None where that cannot be told apart from our share (a
    cgroup/affinity/Ray-limited view of a bigger machine) or ``UNIMAT_THREADS_LOAD=0``."""
    if os.environ.get(LOAD_ENV, "1") == "0" or usable != (os.cpu_count() or usable):
        return None
    try:
        own0, a = time.process_time(), parse_proc_stat(Path("/proc/stat").read_text())
        time.sleep(interval)
        b, own1 = parse_proc_stat(Path("/proc/stat").read_text()), time.process_time()
    except (OSError, ValueError):
        return None
    ticks = (b[1] - a[1]) / max(1, usable)  # wall ticks of one CPU
    own = (own1 - own0) * (os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)
    busy = busy_between(a, b, usable) - (own / ticks if ticks > 0 else 0.0)
    return max(0.0, busy)


def explicit_setting() -> int | None:
    """A thread count the user set in the environment (``UNIMAT_THREADS=N``, or OMP_NUM_THREADS not set
    by this policy), else None."""
    v = os.environ.get(USER_ENV, "auto").strip().lower()
    if v not in ("", "auto"):
        return int(v)
    if os.environ.get(AUTO_MARK) is None and os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        return int(os.environ["OMP_NUM_THREADS"])
    return None


def resolve(requested: int | None = None, processes: int = 1, what: str = "unimat",
            measure_load: bool = True) -> int:
    """This process's thread count (no side effects besides a warning): ``requested`` is an explicit
    setting (None: the environment's, else the policy); ``processes`` how many processes of this kind
    share the usable CPUs (pool size, Ray workers of a node)."""
    in_ray = ray_cpus() is not None
    if requested is None and not in_ray:
        requested = explicit_setting()
    usable = usable_cpus()
    busy = None if (requested or in_ray or not measure_load) else busy_elsewhere(usable)
    threads, warning = plan_threads(usable, busy, processes, requested)
    if warning:
        log.warning("%s: %s", what, warning)
    log.debug("%s: %d thread(s) (usable CPUs %d, busy elsewhere %s, processes %d, requested %s)",
              what, threads, usable, None if busy is None else round(busy, 2), processes, requested)
    return threads


def apply(threads: int, export_env: bool = True, explicit: bool = False) -> None:
    """Use ``threads``: torch (if imported) now; torch/BLAS imported later and child processes through
    the environment (``export_env``), marked as this policy's unless ``explicit``."""
    if export_env:
        for var in THREAD_ENV_VARS:
            os.environ[var] = str(threads)
        os.environ[AUTO_MARK] = "0" if explicit else "1"
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "set_num_threads"):
        torch.set_num_threads(threads)


def configure(requested: int | None = None, processes: int = 1, what: str = "unimat",
              export_env: bool = True, measure_load: bool = True) -> int:
    """:func:`resolve` then :func:`apply`; returns the thread count."""
    explicit = bool(requested) or (ray_cpus() is None and explicit_setting() is not None)
    threads = resolve(requested, processes, what, measure_load)
    apply(threads, export_env, explicit)
    return threads


@contextlib.contextmanager
def without_auto_env():
    """Hide thread variables this policy exported while starting processes that pick their own (a local
    Ray: Ray sets each worker's OMP_NUM_THREADS from its reserved CPUs unless the variable is set)."""
    if os.environ.get(AUTO_MARK) != "1":
        yield
        return
    saved = {k: os.environ.pop(k) for k in (*THREAD_ENV_VARS, AUTO_MARK) if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)
