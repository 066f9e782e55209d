"""The GNoME-scale benchmark's code path at 10k records (bench/bench_scale.py; the 2.2M run is in
bench/results/scale_cpu.json): synthetic release -> ingest (file:// and the S3 emulator on 127.0.0.1) ->
kill + resume -> ``trainer: ray`` streaming the shards with 2 workers -> generate-batch killed and resumed.
Every step runs the real CLI in a subprocess with a local Ray bound to 127.0.0.1."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_scale_bench_small(tmp_path):
    out = tmp_path / "scale.json"
    cmd = [sys.executable, str(ROOT / "bench" / "bench_scale.py"), "--work", str(tmp_path / "w"), "--n", "10000",
           "--small-n", "2000", "--s3-n", "2000", "--cpus", "2", "--records-per-unit", "1000", "--train-steps", "6", "--replay-batches", "3",
           "--compositions", "200", "--samples", "2", "--gen-steps", "5", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    res = json.loads(out.read_text())

    synth = res["synth"]["10000"]
    assert synth["rows"] == 10000
    for key in ("n_elements", "nsites"):
        tv = 0.5 * sum(abs(synth["achieved"][key].get(k, 0) - v) for k, v in synth["target"][key].items())
        assert tv < 0.03, (key, synth)

    big, small = res["ingest"]["10000"], res["ingest"]["2000"]
    for run, n in ((big, 10000), (small, 2000)):
        assert run["read"] == n and run["written"] + run["quarantined"] == n and run["written"] > 0.95 * n
        assert run["driver_peak_mb"] > 50 and run["worker_peak_mb"] > 50  # the sampler saw the processes
        assert run["shards"] >= 3 and run["bytes_per_record"] > 1000
    assert set(big["quarantined_by_reason"]) <= {"too_many_atoms_per_element", "overlapping_atoms"}
    # memory: a 5x larger input does not grow the driver or a worker much (the 2.2M run holds it to 10 %)
    assert res["ingest"]["driver_peak_mb_ratio_big_over_small"] < 1.3
    assert res["ingest"]["worker_peak_mb_ratio_big_over_small"] < 1.3

    resume = res["resume"]
    assert resume["shards_equal_uninterrupted"] is True
    assert 1 <= resume["units_committed_at_kill"] < resume["units_total"] == 10
    assert resume["units_skipped_on_resume"] >= resume["units_committed_at_kill"] and resume["read"] == 10000

    assert res["s3"]["read"] == 2000 and res["s3"]["written"] == small["written"]

    train = res["train"]
    assert train["deal_disjoint"] and train["deal_complete"] and train["manifest_records"] == big["written"]
    for run in (train["streaming"], train["replay"]):
        assert run["steps_logged"] == 6 and run["first_step_s"] is not None and run["samples_per_s"] > 0
    assert Path(train["streaming"]["out_dir"], "inference.pt").exists()

    gen = res["generate"]
    assert gen["manifest_counts"]["samples"] == gen["compositions"] * 2 == 400
    assert gen["manifest_counts"]["rejected_requests"] == 0
    assert 1 <= gen["units_committed_at_kill"] < gen["units_total"]
    assert gen["gallery"] and gen["candidates_per_s"] > 0

    proj = res["report"]["projection"]
    assert {p["records"] for p in proj} == {2_200_000, 20_000_000} and all(p["wall_min"] > 0 for p in proj)
    assert out.with_suffix(".png").stat().st_size > 10_000
