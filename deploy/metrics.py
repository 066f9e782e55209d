"""Metrics of the generation service: Prometheus series through Ray's metrics agent, plus the replica's
own counters served as JSON (``GET /v1/stats``).

The Prometheus series are ``ray.util.metrics`` objects: every replica reports them to its node's Ray
metrics agent, which serves them (prefixed ``ray_``) on the node's metrics export port next to Ray
Serve's built-in ``ray_serve_*`` series; a Prometheus ``PodMonitor`` / scrape config of the Ray
cluster collects them (see docs/generation.md). Names, as exported:

=============================================  =========  ==========================================
``ray_unimat_serve_requests_total``            counter    HTTP requests by ``route`` and ``status``
``ray_unimat_serve_errors_total``              counter    failed requests by error ``type`` (400
                                                          malformed_json, header_not_allowed; 408
                                                          request_timeout; 413 request_too_large; 422
                                                          invalid_request, limit_exceeded,
                                                          model_constraint; 503 unavailable; 500
                                                          internal; cancelled)
``ray_unimat_serve_request_latency_seconds``   histogram  receipt to response of ``POST /v1/generate``
``ray_unimat_serve_batch_requests``            histogram  requests admitted together into the running loop
``ray_unimat_serve_step_requests``             histogram  requests sharing one network evaluation (the
                                                          batch the device actually runs)
``ray_unimat_serve_step_samples``              histogram  rows (crystals) of one network evaluation
``ray_unimat_serve_sampling_seconds``          histogram  admission to last step of one request
``ray_unimat_serve_structures_total``          counter    generated crystals by ``outcome`` (valid,
                                                          invalid, undecoded)
=============================================  =========  ==========================================
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from unimat_dist.observability.series import Series, ray_series

LATENCY_BOUNDARIES = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)  # seconds
BATCH_BOUNDARIES = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # requests per batch
SAMPLE_BOUNDARIES = (1, 4, 16, 64, 256, 1024, 4096)  # rows per network evaluation

# exported by Ray as ray_<name>, tagged with the deployment
RAY_SERIES = {
    "unimat_serve_requests_total": Series("counter", "HTTP requests by route and status", tags=("route", "status")),
    "unimat_serve_errors_total": Series("counter", "failed requests by error type", tags=("type",)),
    "unimat_serve_request_latency_seconds": Series("histogram", "request latency, seconds", tags=("route",),
                                                   boundaries=LATENCY_BOUNDARIES),
    "unimat_serve_batch_requests": Series("histogram", "requests admitted together", boundaries=BATCH_BOUNDARIES),
    "unimat_serve_step_requests": Series("histogram", "requests per network evaluation", boundaries=BATCH_BOUNDARIES),
    "unimat_serve_step_samples": Series("histogram", "rows per network evaluation", boundaries=SAMPLE_BOUNDARIES),
    "unimat_serve_sampling_seconds": Series("histogram", "sampling time of one request, seconds",
                                            boundaries=LATENCY_BOUNDARIES),
    "unimat_serve_structures_total": Series("counter", "generated crystals by outcome", tags=("outcome",)),
}


class ServiceMetrics:
    """Prometheus series (when running inside Ray) and in-process totals, updated together."""

    def __init__(self, deployment: str = "UniMatGenerator") -> None:
        self.started = time.time()
        self._lock = threading.Lock()  # batches finish in a worker thread, requests on the event loop
        self.requests: Counter[str] = Counter()  # "route status" -> n
        self.errors: Counter[str] = Counter()
        self.batch_sizes: Counter[int] = Counter()  # requests admitted together -> number of admissions
        self.step_requests: Counter[int] = Counter()  # requests per network evaluation -> number of steps
        self.step_rows = 0
        self.step_seconds = 0.0
        self.sampling_seconds = 0.0
        self.structures: Counter[str] = Counter()
        self._prom = ray_series(RAY_SERIES, {"deployment": deployment}, "unimat_serve_")

    # --------------------------------------------------------------------- recording
    def request(self, route: str, status: int, seconds: float | None = None) -> None:
        with self._lock:
            self.requests[f"{route} {status}"] += 1
        if self._prom:
            self._prom["requests_total"].inc(tags={"route": route, "status": str(status)})
            if seconds is not None:
                self._prom["request_latency_seconds"].observe(seconds, tags={"route": route})

    def error(self, type_: str) -> None:
        with self._lock:
            self.errors[type_] += 1
        if self._prom:
            self._prom["errors_total"].inc(tags={"type": type_})

    def batch(self, num_requests: int) -> None:
        with self._lock:
            self.batch_sizes[int(num_requests)] += 1
        if self._prom:
            self._prom["batch_requests"].observe(num_requests)

    def step(self, rows: int, requests: int, seconds: float) -> None:
        """One network evaluation of the running loop: its rows, the requests they belong to, its duration."""
        with self._lock:
            self.step_requests[int(requests)] += 1
            self.step_rows += int(rows)
            self.step_seconds += seconds
        if self._prom:
            self._prom["step_requests"].observe(requests)
            self._prom["step_samples"].observe(rows)

    def sampled(self, seconds: float) -> None:
        """One request's sampling finished (admission to last step)."""
        with self._lock:
            self.sampling_seconds += seconds
        if self._prom:
            self._prom["sampling_seconds"].observe(seconds)

    def structure_outcomes(self, outcomes: Counter[str]) -> None:
        with self._lock:
            self.structures.update(outcomes)
        if self._prom:
            for outcome, n in outcomes.items():
                if n:
                    self._prom["structures_total"].inc(n, tags={"outcome": outcome})

    # --------------------------------------------------------------------- reporting
    def snapshot(self) -> dict[str, Any]:
        """The replica's totals since start (``GET /v1/stats``)."""
        with self._lock:
            batches = sum(self.batch_sizes.values())
            steps = sum(self.step_requests.values())
            return {
                "uptime_s": time.time() - self.started,
                "requests": dict(sorted(self.requests.items())),
                "errors_by_type": dict(sorted(self.errors.items())),
                "batches": batches,
                "batch_size_histogram": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                "max_batch_size_seen": max(self.batch_sizes, default=0),
                "mean_batch_size": (sum(k * v for k, v in self.batch_sizes.items()) / batches) if batches else 0.0,
                "steps": steps,
                "step_requests_histogram": {str(k): v for k, v in sorted(self.step_requests.items())},
                "mean_step_requests": (sum(k * v for k, v in self.step_requests.items()) / steps) if steps else 0.0,
                "mean_step_rows": self.step_rows / steps if steps else 0.0,
                "step_seconds_total": self.step_seconds,
                "sampling_seconds_total": self.sampling_seconds,
                "structures": dict(sorted(self.structures.items())),
            }
