"""Prometheus series from one table: through Ray's metrics system (``ray_series``, the one place
``ray.util.metrics`` objects are made) or a prometheus-client registry (``client_series``).

Each exporter (``observability.training``, ``data_pipeline.metrics``, ``deploy.metrics``) declares its series
as a table ``{name: Series(...)}``. Ray's metrics agent on every node serves them, prefixed ``ray_``, on the
node's metrics export port next to Ray's own series, where Ray's Prometheus service discovery and the
PodMonitor in ``deploy/monitoring/`` find them; ``tests/test_monitoring_assets.py`` checks the Grafana
dashboard against these tables.
"""
from __future__ import annotations

from typing import Any, NamedTuple


class Series(NamedTuple):
    kind: str  # "counter", "gauge" or "histogram"
    description: str
    tags: tuple[str, ...] = ()  # tag keys set per observation, beside the exporter's default tags
    boundaries: tuple[float, ...] = ()  # histogram bucket bounds


def ray_series(table: dict[str, Series], default_tags: dict[str, str], prefix: str) -> dict[str, Any] | None:
    """The ``ray.util.metrics`` objects of ``table`` with ``default_tags`` set, keyed by name without
    ``prefix``; None outside a Ray session (unit tests, plain Python, a job run without Ray)."""
    import ray

    if not ray.is_initialized():
        return None
    from ray.util.metrics import Counter, Gauge, Histogram

    out = {}
    for name, s in table.items():
        keys = (*default_tags, *s.tags)
        if s.kind == "histogram":
            metric = Histogram(name, s.description, boundaries=list(s.boundaries), tag_keys=keys)
        else:
            metric = {"counter": Counter, "gauge": Gauge}[s.kind](name, s.description, tag_keys=keys)
        metric.set_default_tags(default_tags)
        out[name.removeprefix(prefix)] = metric
    return out


def client_series(table: dict[str, Series], labels: dict[str, str], prefix: str, registry) -> dict[str, Any]:
    """The same ``table`` as prometheus-client metrics in ``registry``, labelled with ``labels`` and keyed by
    name without ``prefix`` (series with per-observation ``tags`` are not supported here). Names are
    exported as written: a counter named ``..._total`` keeps that name."""
    from prometheus_client import Counter, Gauge, Histogram

    out = {}
    for name, s in table.items():
        if s.tags:
            raise ValueError(f"{name}: per-observation tags are not supported by the prometheus-client exporter")
        keys = list(labels)
        if s.kind == "histogram":
            metric = Histogram(name, s.description, keys, registry=registry, buckets=list(s.boundaries))
        else:
            metric = {"counter": Counter, "gauge": Gauge}[s.kind](name, s.description, keys, registry=registry)
        out[name.removeprefix(prefix)] = metric.labels(**labels)
    return out
