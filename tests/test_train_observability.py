"""Observability of ``trainer: ray``: progress on the driver's console and metrics through Ray's
metrics agent (a real local Ray on 127.0.0.1, one short run in which rank 0 is killed once).

Run: tiny U-Net, Perov-5, 1 Ray Train worker, 4 steps, checkpoint at step 2, rank 0 SIGKILLs itself after
step 3 -> Ray Train restarts the worker group from step 2 -> the driver prints the failure (reported by
the controller's callback), ``restart 1`` and
``restarts=1`` and the ``ray_unimat_train_restarts`` gauge of the new rank 0 says 1.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from metrics_scrape import MetricsScraper, init_ray_with_metrics_port, metric_value
from unimat_dist.observability.progress import ProgressPrinter, _Hub, format_eta
from unimat_dist.launch import run_training
from unimat_dist.training import load_train_config

CONFIG = Path(__file__).resolve().parents[1] / "cluster" / "jobs" / "train_tiny_ray_cpu.yaml"
STEP_LINE = re.compile(
    r"^\[train\] step (\d+)/4 \(\d+%\) loss=\d+\.\d+ samples/s=\d+\.\d ETA (\d+:\d\d:\d\d|\?) restarts=(\d) workers=1$"
)


def test_progress_lines_without_ray():
    lines = []

    class Sink:
        def write(self, s):
            lines.append(s)

        def flush(self):
            pass

    p = ProgressPrinter(100, 32, stream=Sink())
    p.handle_record({"kind": "start", "step": 0, "world_size": 4})
    p.handle_record({"kind": "step", "step": 10, "loss": 0.5, "samples_per_s": 64.0, "world_size": 4, "time": 100.0})
    p.handle_record({"kind": "step", "step": 20, "loss": 0.4, "samples_per_s": 64.0, "world_size": 4, "time": 110.0})
    p.handle_record({"kind": "failure", "ranks": [3], "error": "ActorDiedError: node gone"})
    p.handle_record({"kind": "start", "step": 20, "world_size": 3})
    p.handle_record({"kind": "step", "step": 30, "loss": 0.3, "samples_per_s": 48.0, "world_size": 3, "time": 200.0})
    # a group that starts without a failure before it is an elastic resize, not a restart
    p.handle_record({"kind": "start", "step": 30, "world_size": 4})
    p.handle_record({"kind": "step", "step": 40, "loss": 0.2, "samples_per_s": 64.0, "world_size": 4, "time": 300.0})
    assert p.lines == [
        "[train] 4 worker(s) started, 100 steps",
        "[train] step 10/100 (10%) loss=0.5000 samples/s=64.0 ETA 0:00:45 restarts=0 workers=4",  # 90*32/64
        "[train] step 20/100 (20%) loss=0.4000 samples/s=64.0 ETA 0:01:20 restarts=0 workers=4",  # 80 steps x 1 s
        "[train] worker failure (rank 3): ActorDiedError: node gone",
        "[train] restart 1: 3 worker(s) resumed at step 20",
        "[train] step 30/100 (30%) loss=0.3000 samples/s=48.0 ETA 0:00:47 restarts=1 workers=3",
        "[train] resized to 4 worker(s) (elastic), resumed at step 30",
        "[train] step 40/100 (40%) loss=0.2000 samples/s=64.0 ETA 0:00:30 restarts=1 resizes=1 workers=4",
    ]
    assert (p.restarts, p.resizes) == (1, 1)
    assert format_eta(None) == "?" and format_eta(3725) == "1:02:05"


def test_hub_keeps_records_until_acknowledged():
    """A drain whose reply the driver gave up on (timeout under load) loses nothing."""
    hub = _Hub()
    for step in (1, 2, 3):
        hub.push({"kind": "step", "step": step})
    first = hub.drain(0)
    assert [n for n, _ in first] == [1, 2, 3]
    hub.push({"kind": "step", "step": 4})
    # the driver never saw the first reply: asking again with seen=0 returns everything once more
    assert [r["step"] for _, r in hub.drain(0)] == [1, 2, 3, 4]
    assert [r["step"] for _, r in hub.drain(3)] == [4]
    assert hub.drain(4) == [] and hub.records == []


@pytest.mark.slow
def test_driver_console_and_ray_metrics_of_a_restarted_run(tmp_path, capsys):
    import ray

    port = init_ray_with_metrics_port()
    try:
        with MetricsScraper(port, "ray_unimat_train_step{") as scraper:
            cfg = load_train_config(CONFIG, [
                f"out_dir={tmp_path / 'obs'}", "train.steps=4", "train.ckpt_every=2", "distributed.num_workers=1",
                "train.val_every=0",
                "train.log_every=1", "train.val_batches=1", "train.global_batch_size=8", "train.micro_batch_size=8",
                "optim.warmup_steps=1", "data.limit_train=32", "data.limit_val=8", "distributed.metrics_port=null",
                "distributed.fail_at.step=3", "distributed.fail_at.rank=0",
            ])
            t0 = time.time()
            res = run_training(cfg)
            elapsed = time.time() - t0
            # bounded wait for the restarted rank 0's last values to reach the agent's export
            deadline = time.time() + 20
            while time.time() < deadline and not any(metric_value(s, "ray_unimat_train_step") == 4 for s in scraper.pages):
                time.sleep(0.5)
    finally:
        ray.shutdown()
    scraped = scraper.pages
    assert res.steps == 4
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("[train]")]
    steps = [STEP_LINE.match(ln) for ln in lines if ln.startswith("[train] step")]
    assert steps and all(steps), f"malformed progress lines:\n{out}"
    seen = [int(m.group(1)) for m in steps]
    assert seen[-1] == 4 and {1, 2, 3, 4} <= set(seen), seen
    assert any(ln.startswith("[train] worker failure (rank 0): ") for ln in lines), lines  # from the controller
    assert any(ln.startswith("[train] restart 1: 1 worker(s) resumed at step 2") for ln in lines), lines
    assert not any("resized" in ln for ln in lines), lines
    assert int(steps[-1].group(3)) == 1, "the last progress line should count the restart"
    assert any(m.group(2) != "?" for m in steps)  # an ETA
    # Ray's metrics agent exported rank 0's series (the prometheus-client exporter is off)
    assert scraped, "no ray_unimat_train_* series on the node's metrics export port"
    text = "\n".join(scraped)
    for name in ("ray_unimat_train_step", "ray_unimat_train_loss", "ray_unimat_train_samples_per_second",
                 "ray_unimat_train_world_size", "ray_unimat_train_total_steps", "ray_unimat_train_step_seconds_bucket",
                 "ray_unimat_train_restarts"):
        assert f"{name}{{" in text, name
    assert 'run="obs"' in text
    assert max(metric_value(s, "ray_unimat_train_restarts") or 0 for s in scraped) == 1  # the new rank 0 knows
    with capsys.disabled():
        print(f"\nobservability run: {elapsed:.1f} s; driver console:\n" + "\n".join(lines))

