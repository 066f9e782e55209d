"""Job-level guarantees: a job SIGKILLed mid-way and rerun yields complete shards identical to an
uninterrupted run; reruns are idempotent; a different job never mixes into an output; the YAML
presets load; the CLI flag form works against S3/GCS emulators configured by environment variables."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from data_pipeline.config import IngestConfig
from data_pipeline.job import run_ingest
from job_kill import kill_after_units
from shard_checks import GNOME_MINI, cdvae_sources, check_dataset
from storage_emulators import gcs_emulator, s3_emulator  # noqa: F401 (fixtures)
from unimat_dist.config import load_config
from unimat_dist.shards import read_manifest

ROOT = Path(__file__).resolve().parents[1]
UNIMAT = str(Path(sys.executable).parent / "unimat")
COMPARED = ("spec", "normalizer", "normalizer_fit_split", "properties", "property_stats", "splits", "shards",
            "counts", "quarantine_files", "split_policy", "source")


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _write_config(path: Path, output: Path, executor: str) -> Path:
    cfg = {
        "source": {"format": "cdvae-csv", "dataset": "mp_20_subset"},
        "output": {"uri": str(output), "records_per_unit": 25},
        # pymatgen's parser makes each unit slow enough (~0.1 s) to be killed in the middle of the job
        "validate": {"cif_parser": "pymatgen"},
        "run": {"executor": executor, "num_cpus": 2},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_killed_job_resumes_to_identical_shards(tmp_path):
    out = tmp_path / "killed"
    cfg_path = _write_config(tmp_path / "job.yaml", out, "ray")
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled")
    units = out / "_units"
    committed = len(kill_after_units([UNIMAT, "ingest", "--config", str(cfg_path)], env, tmp_path / "run1.log",
                                     units, min_units=3))
    assert 3 <= committed < 45 and not (out / "manifest.json").exists()
    # debris a crash can leave: an unfinished local write and a stray shard of an uncommitted unit
    (out / "train" / ".tmp-0badc0de-u000030-0.tar").write_bytes(b"partial")

    rerun = subprocess.run([UNIMAT, "ingest", "--config", str(cfg_path)], env=env, capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    found = re.search(r"(\d+) of 45 units already committed", rerun.stderr)
    assert found, rerun.stderr[-3000:]
    assert committed <= int(found.group(1)) < 45  # every unit committed before the rerun is skipped

    ref = tmp_path / "reference"
    run_ingest(load_config(IngestConfig, _write_config(tmp_path / "ref.yaml", ref, "local")))
    got_tree, ref_tree = _tree(out), _tree(ref)
    shard_files = {k for k in ref_tree if k.endswith(".tar")}
    assert shard_files == {k for k in got_tree if k.endswith(".tar")}
    assert all(got_tree[k] == ref_tree[k] for k in shard_files)  # byte-identical shards
    assert not any(".tmp-" in k for k in got_tree)  # crash debris swept
    a, b = json.loads(got_tree["manifest.json"]), json.loads(ref_tree["manifest.json"])
    assert {k: a[k] for k in COMPARED} == {k: b[k] for k in COMPARED}
    check_dataset(str(out), cdvae_sources("mp_20_subset"), key=lambda m: f"{m['split']}/{m['id']}", pymatgen_checks=0)


def _local_cfg(output: Path, **source) -> IngestConfig:
    cfg = IngestConfig()
    cfg.source.format = source.pop("format", "cdvae-csv")
    for k, v in source.items():
        setattr(cfg.source, k, v)
    cfg.output.uri, cfg.output.records_per_unit = str(output), 200
    cfg.spec.max_atoms_per_element = 20
    cfg.run.executor = "local"
    return cfg


def test_rerun_of_a_complete_job_skips_every_unit(tmp_path):
    cfg = _local_cfg(tmp_path / "o", dataset="mp_20_subset", limit=300)
    first = run_ingest(cfg)
    before = _tree(tmp_path / "o")
    second = run_ingest(cfg)
    assert second.units_skipped == second.units == first.units and second.written == first.written
    after = _tree(tmp_path / "o")
    assert {k: v for k, v in after.items() if k != "manifest.json"} == {k: v for k, v in before.items() if k != "manifest.json"}


def test_a_different_job_is_refused_unless_overwrite(tmp_path):
    run_ingest(_local_cfg(tmp_path / "o", dataset="mp_20_subset", limit=100))
    other = _local_cfg(tmp_path / "o", format="gnome", uri=str(GNOME_MINI))
    with pytest.raises(ValueError, match="holds the output of a different ingest job"):
        run_ingest(other)
    other.output.overwrite = True
    summary = run_ingest(other)
    m = read_manifest(str(tmp_path / "o"))
    assert summary.read == 20 and m.raw["source"]["format"] == "gnome"
    # nothing of the old job survives: every shard on disk is one of the new manifest's
    assert {s.path for s in m.shards} == {str(p.relative_to(tmp_path / "o")) for p in (tmp_path / "o").glob("*/*.tar")}


@pytest.mark.parametrize("path", sorted((ROOT / "cluster" / "jobs").glob("ingest_*.yaml")), ids=lambda p: p.name)
def test_yaml_presets_load(path):
    cfg = load_config(IngestConfig, path)
    assert cfg.source.format in ("cdvae-csv", "gnome", "structure-dir") and cfg.output.uri


def test_unknown_config_keys_are_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: {format: gnome, urii: x}\n")
    with pytest.raises(ValueError, match="unknown config key.*urii"):
        load_config(IngestConfig, bad)


def test_cli_flags_with_endpoints_from_environment(s3_emulator, gcs_emulator, monkeypatch, tmp_path, capsys):
    from unimat_dist.cli import main

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_emulator.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.endpoint)
    for uri in (s3_emulator.uri("cli-perov"), gcs_emulator.uri("cli-perov")):
        rc = main(["ingest", "--source", "perov_5", "--format", "cdvae-csv", "--output", uri, "--limit", "40",
                   "--executor", "local"])
        assert rc == 0
        m = read_manifest(uri)  # no storage_options: the endpoint comes from the environment
        assert m.split_counts == {"val": 40, "test": 40} and m.spec.L == 3
    rc = main(["ingest", "--source", str(GNOME_MINI), "--format", "gnome", "--output", str(tmp_path / "g"),
               "--max-atoms-per-element", "4", "--executor", "local"])
    assert rc == 0
    q = read_manifest(str(tmp_path / "g")).raw["counts"]["quarantined_by_reason"]
    assert q["too_many_atoms_per_element"] > 1  # L=4 rejects more of the fixture, each with its reason
    files = sorted((tmp_path / "g" / "quarantine").glob("*.jsonl"))
    entries = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert len(entries) == sum(q.values()) and all({"id", "reason", "message", "source"} <= set(e) for e in entries)
    rc = main(["ingest", "--source", str(GNOME_MINI), "--format", "cdvae-csv", "--output", str(tmp_path / "x"),
               "--executor", "local"])
    assert rc == 2 and "error" in capsys.readouterr().err
