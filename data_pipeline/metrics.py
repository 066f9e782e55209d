"""Metrics of an ingest job, exported by its driver through Ray's metrics system.

Ray Data's own series (``ray_data_output_rows``, ``ray_data_cpu_usage_cores``, ...) say how the
operators run; these say what the job did with the records, per job (tag ``job``: the output URI's last
folder and the job fingerprint's first 8 characters). Ray prefixes the names with ``ray_``:

=============================================  =========  ==========================================
``ray_unimat_ingest_records_read_total``       counter    records read (written + quarantined)
``ray_unimat_ingest_records_written_total``    counter    records written to shards
``ray_unimat_ingest_records_quarantined_total``  counter  records quarantined, tag ``reason``
``ray_unimat_ingest_units_done``               gauge      work units committed (incl. skipped ones)
``ray_unimat_ingest_units_total``              gauge      work units of the job
``ray_unimat_ingest_records_per_second``       gauge      records read per second since the first unit
=============================================  =========  ==========================================

Recorded once per committed unit on the driver (a few hundred updates for 2.2M records). Outside Ray
(``run.executor: local`` without a Ray session) nothing is recorded.
"""
from __future__ import annotations

import logging
from typing import Any

from unimat_dist.observability.series import Series, ray_series

log = logging.getLogger(__name__)

# exported by Ray as ray_<name>
RAY_SERIES = {
    "unimat_ingest_records_read_total": Series("counter", "records read (written + quarantined)"),
    "unimat_ingest_records_written_total": Series("counter", "records written to shards"),
    "unimat_ingest_records_quarantined_total": Series("counter", "records quarantined, by reason", tags=("reason",)),
    "unimat_ingest_units_done": Series("gauge", "work units committed, including those skipped on resume"),
    "unimat_ingest_units_total": Series("gauge", "work units of the job"),
    "unimat_ingest_records_per_second": Series("gauge", "records read per second since the first unit"),
}


class IngestMetrics:
    """``ray.util.metrics`` series for one job, created at the first committed unit (the Ray runner
    starts Ray lazily); every method is a no-op outside a Ray session."""

    def __init__(self, job: str, total_units: int, units_skipped: int = 0) -> None:
        self.job, self.total_units, self.units = job, total_units, units_skipped
        self.series: dict[str, Any] | None = None
        self._tried = False

    def _ensure(self) -> dict[str, Any] | None:
        if self._tried:
            return self.series
        self._tried = True
        try:
            self.series = ray_series(RAY_SERIES, {"job": self.job}, "unimat_ingest_")
            if self.series is not None:
                self.series["units_total"].set(self.total_units)
        except Exception as exc:  # noqa: BLE001 - metrics never fail a job
            log.debug("ingest metrics unavailable: %s", exc)
        return self.series

    def unit(self, record: dict[str, Any], records_per_second: float) -> None:
        self.units += 1
        s = self._ensure()
        if s is None:
            return
        try:
            c = record["counts"]
            if c.get("read"):
                s["records_read_total"].inc(c["read"])
            if c.get("written"):
                s["records_written_total"].inc(c["written"])
            for reason, n in (c.get("quarantined_by_reason") or {}).items():
                if n:
                    s["records_quarantined_total"].inc(n, tags={"reason": str(reason)[:64]})
            s["units_done"].set(self.units)
            # with every update, not once: a gauge set only at the start was missing from later exports
            # of Ray's metrics agent on a slow machine, next to units_done
            s["units_total"].set(self.total_units)
            s["records_per_second"].set(records_per_second)
        except Exception as exc:  # noqa: BLE001
            log.debug("ingest metrics not recorded: %s", exc)
