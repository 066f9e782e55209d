"""A background scraper of a Prometheus text endpoint on 127.0.0.1, for tests that watch a run's metrics."""
from __future__ import annotations

import threading
import urllib.request


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
