"""``unimat train --print-config`` / ``--dry-run``: the resolved config, and checks that fail fast with one
line naming the config key (no data loaded, no Ray started)."""
from __future__ import annotations

import time
from pathlib import Path

import yaml

from unimat_dist.cli import main

CONFIG = str(Path(__file__).resolve().parents[1] / "cluster" / "jobs" / "train_tiny_ray_cpu.yaml")


def test_print_config_is_the_resolved_yaml(tmp_path, capsys):
    rc = main(["train", "--config", CONFIG, "--print-config", "train.steps=7", f"out_dir={tmp_path}/run"])
    out = capsys.readouterr().out
    assert rc == 0
    cfg = yaml.safe_load(out)
    assert cfg["trainer"] == "ray" and cfg["train"]["steps"] == 7 and cfg["distributed"]["num_workers"] == 2
    assert f"run storage {tmp_path}/run/ray" in out and "world size(s) [2]" in out
    assert not (tmp_path / "run").exists()  # nothing written


def test_dry_run_good_config_passes_quickly(tmp_path, capsys):
    t0 = time.perf_counter()
    rc = main(["train", "--config", CONFIG, "--dry-run", f"out_dir={tmp_path}/run"])
    elapsed = time.perf_counter() - t0
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "ok  batch: 2 worker(s): micro-batch 16 x 1 accumulation" in out
    assert f"ok  storage: {tmp_path}/run/ray writable" in out
    assert "dry run: the config passes every check" in out
    assert not (tmp_path / "run").exists(), "a dry run leaves nothing behind"
    assert elapsed < 45, f"dry run took {elapsed:.1f} s"


def test_dry_run_bad_batch_divisibility_fails_before_data(tmp_path, capsys):
    rc = main(["train", "--config", CONFIG, "--dry-run", f"out_dir={tmp_path}/run",
               "train.global_batch_size=30", "train.micro_batch_size=8"])
    cap = capsys.readouterr()
    assert rc == 2
    err = [ln for ln in cap.err.splitlines() if ln.startswith("unimat train: error:")]
    assert len(err) == 1
    assert "train.global_batch_size: 30 is not divisible by workers x train.micro_batch_size = 2 x 8" in err[0]
    assert "ok  data" not in cap.out  # failed before the data sources were looked at


def test_dry_run_unreachable_storage_names_the_key(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    rc = main(["train", "--config", CONFIG, "--dry-run", f"out_dir={tmp_path}/run",
               f"distributed.storage_path={blocker}/runs"])
    cap = capsys.readouterr()
    assert rc == 2
    err = [ln for ln in cap.err.splitlines() if ln.startswith("unimat train: error:")]
    assert len(err) == 1, err
    assert err[0].startswith(f"unimat train: error: distributed.storage_path: storage {blocker}/runs:"), err


def test_dry_run_local_trainer_unwritable_out_dir(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc = main(["train", "--config", CONFIG, "--dry-run", "trainer=local", f"out_dir={blocker}/run"])
    cap = capsys.readouterr()
    assert rc == 2 and "unimat train: error: out_dir: storage" in cap.err
