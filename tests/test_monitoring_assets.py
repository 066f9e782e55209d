"""deploy/grafana and deploy/monitoring: every metric the dashboard queries is one the code exports
(ours: ``ray_`` + a name passed to ``ray.util.metrics`` in unimat_dist/, data_pipeline/ or deploy/; Ray's own
``ray_data_*`` / ``ray_serve_*``: defined in the installed Ray), and the monitors scrape the port the
KubeRay manifests name ``metrics``."""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "unimat-dashboard.json"
SUFFIXES = ("_bucket", "_count", "_sum")


def _exprs(panels):
    for p in panels:
        yield from (t["expr"] for t in p.get("targets", []))
        yield from _exprs(p.get("panels", []))


def _source(*dirs: Path) -> str:
    return "\n".join(p.read_text() for d in dirs for p in d.rglob("*.py"))


def dashboard_metrics() -> set[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = list(_exprs(dash["panels"]))
    exprs += [v["definition"] for v in dash["templating"]["list"] if "definition" in v]
    names = set()
    for e in exprs:
        for name in re.findall(r"\bray_[a-z0-9_]+", e):
            for s in SUFFIXES:
                if name.endswith(s):
                    name = name[: -len(s)]
            names.add(name)
    return names


def test_every_dashboard_metric_exists_in_the_code():
    import ray

    names = dashboard_metrics()
    ours = {n for n in names if n.startswith("ray_unimat_")}
    assert {n.split("_")[2] for n in ours} == {"train", "serve", "ingest"}
    assert any(n.startswith("ray_data_") for n in names), "no ingest (Ray Data) panel"
    code = _source(ROOT / "unimat_dist", ROOT / "deploy", ROOT / "data_pipeline")
    missing = [n for n in ours if not re.search(rf"[\"']{n.removeprefix('ray_')}[\"']", code)]
    assert not missing, f"dashboard queries metrics no code exports: {missing}"
    ray_code = _source(Path(ray.__file__).parent / "data", Path(ray.__file__).parent / "serve")
    missing = [n for n in names - ours if f'"{n.removeprefix("ray_")}"' not in ray_code]
    assert not missing, f"dashboard queries Ray metrics this Ray does not define: {missing}"


def test_training_series_exported_through_ray_match_the_dashboard():
    from unimat_dist.observability.training import SERIES as RAY_SERIES

    names = dashboard_metrics()
    train = {n.removeprefix("ray_") for n in names if n.startswith("ray_unimat_train_")}
    assert train == set(RAY_SERIES), f"panels missing for {set(RAY_SERIES) - train}, unknown {train - set(RAY_SERIES)}"


def test_ingest_series_exported_through_ray_match_the_dashboard():
    from data_pipeline.metrics import RAY_SERIES

    names = dashboard_metrics()
    ingest = {n.removeprefix("ray_") for n in names if n.startswith("ray_unimat_ingest_")}
    assert ingest == set(RAY_SERIES), f"panels missing for {set(RAY_SERIES) - ingest}, unknown {ingest - set(RAY_SERIES)}"


def test_dashboard_is_importable_grafana_json():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["targets"] and p["datasource"]["uid"] == "${datasource}", p["title"]
    assert {v["name"] for v in dash["templating"]["list"]} == {"datasource", "run", "deployment"}


def test_monitors_scrape_the_metrics_port_of_the_kuberay_manifests():
    pm = yaml.safe_load((ROOT / "deploy" / "monitoring" / "podmonitor.yaml").read_text())
    sm = yaml.safe_load((ROOT / "deploy" / "monitoring" / "servicemonitor.yaml").read_text())
    assert pm["kind"] == "PodMonitor" and pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["kind"] == "ServiceMonitor" and sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert [e["port"] for e in pm["spec"]["podMetricsEndpoints"]] == ["metrics"]
    assert [e["port"] for e in sm["spec"]["endpoints"]] == ["metrics"]
    assert pm["spec"]["selector"]["matchExpressions"][0]["key"] == "ray.io/node-type"
    manifests = [ROOT / "deploy" / "kuberay-rayservice.yaml", *sorted((ROOT / "cluster" / "kuberay").glob("*.yaml"))]
    # KubeRay starts Ray with --metrics-export-port=8080 and a container port named `metrics` unless a
    # manifest says otherwise; a manifest that sets them must keep both
    for m in manifests:
        text = m.read_text()
        for port in re.findall(r"metrics-export-port:\s*\"?(\d+)", text):
            assert port == "8080", f"{m.name}: metrics-export-port {port}"
        for port in re.findall(r"containerPort:\s*(\d+),\s*name:\s*metrics", text):
            assert port == "8080", f"{m.name}: container port `metrics` is {port}"
