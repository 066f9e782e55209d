"""``unimat ingest`` exports what it did with the records through Ray's metrics agent (data_pipeline/metrics.py):
a real local Ray on 127.0.0.1 with a metrics export port, the committed GNoME-format fixture (20 rows,
6 of them bad), the node's Prometheus page scraped while the job runs."""
from __future__ import annotations

import time
from pathlib import Path

from metrics_scrape import MetricsScraper, init_ray_with_metrics_port, metric_value

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "gnome_mini"


def _series(text: str, name: str) -> dict[str, float]:
    out = {}
    for ln in text.splitlines():
        if ln.startswith(name + "{"):
            labels, value = ln.rsplit(" ", 1)
            out[labels] = float(value)
    return out


def test_ingest_records_units_and_quarantine_reasons_reach_ray_metrics(tmp_path):
    import ray

    from data_pipeline.config import IngestConfig
    from data_pipeline.job import run_ingest

    port = init_ray_with_metrics_port()
    try:
        with MetricsScraper(port, "ray_unimat_ingest_units_done{") as scraper:
            cfg = IngestConfig()
            cfg.source.format, cfg.source.uri = "gnome", str(FIXTURE)
            cfg.output.uri, cfg.output.records_per_unit = str(tmp_path / "out"), 8
            cfg.spec.max_atoms_per_element = 20
            cfg.run.executor = "ray"
            summary = run_ingest(cfg)
            deadline = time.time() + 30  # bounded wait for the last unit's values to reach the export
            while time.time() < deadline and not any(
                    metric_value(s, "ray_unimat_ingest_records_read_total") == summary.read for s in scraper.pages):
                time.sleep(0.5)
    finally:
        ray.shutdown()
    assert scraper.pages, "no ray_unimat_ingest_* series on the node's metrics export port"
    last = [s for s in scraper.pages if metric_value(s, "ray_unimat_ingest_records_read_total") == summary.read]
    assert last, f"read counter never reached {summary.read}"
    page = last[-1]
    assert metric_value(page, "ray_unimat_ingest_records_written_total") == summary.written
    assert metric_value(page, "ray_unimat_ingest_units_done") == metric_value(page, "ray_unimat_ingest_units_total") == summary.units
    assert (metric_value(page, "ray_unimat_ingest_records_per_second") or 0) > 0
    reasons = _series(page, "ray_unimat_ingest_records_quarantined_total")
    by_reason = {k.split('reason="')[1].split('"')[0]: v for k, v in reasons.items()}
    assert by_reason == {k: float(v) for k, v in summary.quarantined_by_reason.items()}
    assert sum(by_reason.values()) == summary.quarantined == 6
    assert 'job="out-' in page  # the job tag: output folder + fingerprint prefix
