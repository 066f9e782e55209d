"""A multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a 0-CPU head plus two 1-CPU
worker nodes, all on 127.0.0.1): remove a whole node in the middle of an elastic run (1..2 workers),
the run continues on the remaining node from its latest checkpoint; add a node back, and the elastic
run grows back to 2 workers and finishes there.

What Ray 2.60's Train V2 does here (observed by this test): a node loss is a worker-group failure
(counted against ``max_failures``); the controller restarts the group with as many workers as the
cluster can place, within [min_workers, num_workers], from the latest checkpoint; while healthy, an
elastic run checks every ``elastic_resize_monitor_interval_s`` whether more workers fit and, if so,
restarts the group larger from the latest checkpoint.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from unimat_dist.launch import run_training

from unimat_dist.training import load_train_config

pytestmark = pytest.mark.slow
CONFIG = Path(__file__).resolve().parents[1] / "cluster" / "jobs" / "train_tiny_ray_cpu.yaml"


def _checkpoint_metas(storage: Path) -> list[dict]:
    out = []
    for d in sorted(storage.glob("checkpoint_*")):
        try:
            out.append(json.loads((d / "meta.json").read_text()))
        except (OSError, ValueError):
            pass
    return out


def test_node_removed_and_added_back(tmp_path, capsys):
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=1), cluster.add_node(num_cpus=1)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    out = tmp_path / "elastic"
    storage = out / "ray" / "elastic"
    cfg = load_train_config(CONFIG, [
        f"out_dir={out}", "train.steps=60", "train.ckpt_every=4", "train.val_every=0", "train.log_every=2",
        "train.global_batch_size=16", "train.micro_batch_size=8", "data.limit_train=64", "data.limit_val=16",
        "train.val_batches=1", "train.keep_checkpoints=100", "distributed.num_workers=2", "distributed.min_workers=1",
        "distributed.elastic_resize_interval_s=5", "distributed.max_failures=4", "distributed.metrics_port=null",
    ])
    events: dict[str, float] = {}
    outcome: dict = {}

    def train():  # the driver runs in a thread; node changes must come from the main thread
        try:
            outcome["result"] = run_training(cfg)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    t = threading.Thread(target=train, daemon=True)
    t.start()
    try:
        deadline = time.time() + 600
        while t.is_alive() and time.time() < deadline and not any(m["world_size"] == 2 for m in _checkpoint_metas(storage)):
            time.sleep(0.5)
        cluster.remove_node(nodes[1])
        events["removed"] = time.time()
        # wait for a checkpoint written by the shrunken (1-worker) group, then give the node back
        while t.is_alive() and time.time() < deadline and not any(m["world_size"] == 1 for m in _checkpoint_metas(storage)):
            time.sleep(0.5)
        nodes.append(cluster.add_node(num_cpus=1))
        events["added"] = time.time()
        t.join(timeout=max(1.0, deadline - time.time()))
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.steps == 60
    assert "removed" in events and "added" in events
    worlds = [m["world_size"] for m in _checkpoint_metas(storage)]
    steps = [m["step"] for m in _checkpoint_metas(storage)]
    # the run went 2 workers -> 1 (node gone) -> 2 (node back), and checkpoint steps only moved forward
    assert 1 in worlds and worlds[-1] == 2, list(zip(steps, worlds))
    assert steps == sorted(steps)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["resumes"] >= 2
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]
    logged = [r["step"] for r in recs]
    assert logged == sorted(set(logged)) and logged[-1] == 60
    # the driver's console tells the node loss (a failure, then a restart) from the growth (an elastic resize)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[train]")]
    assert any(ln.startswith("[train] worker failure (rank ") for ln in lines), lines
    assert any(ln.startswith("[train] restart 1: 1 worker(s) resumed at step ") for ln in lines), lines
    assert any(ln.startswith("[train] resized to 2 worker(s) (elastic), resumed at step ") for ln in lines), lines


def test_progress_hub_outlives_worker_nodes():
    """The driver's progress hub sits on the driver's node even when that node has no CPUs (Ray's soft
    node affinity placed it on worker nodes 5 times in 6 here), so a lost worker node never silences the
    console: records pushed after every worker node is gone are still printed."""
    import ray
    from ray.cluster_utils import Cluster

    from unimat_dist.observability.progress import ProgressPrinter

    class Sink:
        def write(self, s):
            pass

        def flush(self):
            pass

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1), cluster.add_node(num_cpus=1)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        printers = [ProgressPrinter(10, 8, stream=Sink()) for _ in range(4)]
        hubs = [p.start() for p in printers]
        ray.get([h.push.remote({"kind": "start", "step": 0, "world_size": 2}) for h in hubs], timeout=60)
        for node in workers:
            cluster.remove_node(node)
        ray.get([h.push.remote({"kind": "step", "step": 5, "loss": 0.5, "world_size": 1}) for h in hubs], timeout=60)
        for p in printers:
            p.close()
            assert p.lines[0] == "[train] 2 worker(s) started, 10 steps", p.lines
            assert [ln.split(" loss=")[0] for ln in p.lines[1:]] == ["[train] step 5/10 (50%)"], p.lines
    finally:
        ray.shutdown()
        cluster.shutdown()
