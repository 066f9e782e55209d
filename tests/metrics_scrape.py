"""A background scraper of a Prometheus text endpoint on 127.0.0.1, for tests that watch a run's metrics,
and the local Ray those tests start with a metrics export port."""
from __future__ import annotations

import os
import threading
import urllib.request

from conftest import free_port
from unimat_dist.ray_local import init_ray


def init_ray_with_metrics_port(num_cpus: int = 2) -> int:
    """Start a local Ray whose metrics agent exports every second on a free port; returns the port."""
    port = free_port()
    os.environ["RAY_metrics_report_interval_ms"] = "1000"  # the agent's export period (default 10 s)
    try:
        init_ray("local", num_cpus=num_cpus, log_to_driver=False, _metrics_export_port=port)
    finally:
        os.environ.pop("RAY_metrics_report_interval_ms", None)
    return port


def metric_value(text: str, name: str) -> float | None:
    """The largest value of series ``name`` on a scraped page (None if absent)."""
    vals = [float(ln.rsplit(" ", 1)[-1]) for ln in text.splitlines() if ln.startswith(name + "{")]
    return max(vals) if vals else None


class MetricsScraper:
    """Polls ``http://127.0.0.1:<port>/metrics`` every ``interval`` s while the ``with`` block runs and keeps
    every page that contains ``marker`` in ``pages`` (unreachable or failing polls are skipped)."""

    def __init__(self, port: int, marker: str, *, interval: float = 0.5, timeout: float = 2.0) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.marker, self.interval, self.timeout = marker, interval, timeout
        self.pages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                text = urllib.request.urlopen(self.url, timeout=self.timeout).read().decode()
                if self.marker in text:
                    self.pages.append(text)
            except OSError:
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> "MetricsScraper":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
