"""Operator mistakes (issue 16): output folders, malformed YAML, and where local Ray binds.

Each case runs the real `unimat` entry point and asserts the exact outcome: exit status, the one-line
message, and that nothing the project did not write was touched.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unimat_dist.cli import main

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "checkpoints" / "perov5_transformer_cpu.pt"


def _sample(out: Path, *extra: str) -> int:
    return main(["sample", "--checkpoint", str(CKPT), "--num", "2", "--steps", "3", "--composition", "SrTiO3",
                 "--threads", "1", "--out", str(out), *extra])


def test_sample_refuses_to_mix_runs_and_overwrite_replaces_only_its_files(tmp_path, capsys):
    out = tmp_path / "samples"
    assert _sample(out) == 0
    first = json.loads((out / "summary.json").read_text())
    assert len(list((out / "cif").glob("sample_*.cif"))) == first["num_decoded"] == 2

    assert _sample(out) == 2  # second run into the same folder: refused, nothing mixed
    err = capsys.readouterr().err
    assert "already holds a `unimat sample` result" in err and "--overwrite" in err
    assert json.loads((out / "summary.json").read_text()) == first

    assert _sample(out, "--overwrite", "--seed", "1") == 0
    second = json.loads((out / "summary.json").read_text())
    assert second["request"]["seed"] == 1 and len(list((out / "cif").glob("*.cif"))) == 2
    assert first["gallery"] == second["gallery"] == "gallery/index.html"
    assert len(list((out / "gallery" / "thumbs").glob("*.png"))) <= 2  # the first run's gallery went with it


def test_sample_never_writes_into_or_deletes_unrelated_content(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    for extra in ([], ["--overwrite"]):
        assert _sample(out, *extra) == 2
        assert "holds no `unimat sample` result" in capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]
    # a previous result plus a foreign file: --overwrite still refuses, and deletes nothing
    res = tmp_path / "res"
    assert _sample(res) == 0
    (res / "cif" / "notes.txt").write_text("mine")
    before = sorted(str(p.relative_to(res)) for p in res.rglob("*"))
    assert _sample(res, "--overwrite") == 2
    assert "did not write" in capsys.readouterr().err
    assert sorted(str(p.relative_to(res)) for p in res.rglob("*")) == before
    # the same for a foreign file in the run's gallery folder (a gallery holding only its own files is replaced)
    (res / "cif" / "notes.txt").unlink()
    (res / "gallery" / "notes.txt").write_text("mine")
    before = sorted(str(p.relative_to(res)) for p in res.rglob("*"))
    assert _sample(res, "--overwrite") == 2
    assert "gallery/ holds files a gallery build did not write" in capsys.readouterr().err
    assert sorted(str(p.relative_to(res)) for p in res.rglob("*")) == before


@pytest.mark.parametrize("text, where", [
    ("trainer: local\nmodel:\n  arch: [transformer\n  preset: small\n", ":4:9: malformed YAML"),
    ("trainer: local\nmodel:\n\tarch: x\n", ":3:1: malformed YAML"),
    ("trainer: local\n\xff\xfe\n", ": not UTF-8 text"),
])
def test_malformed_yaml_is_one_line_naming_file_and_line(tmp_path, text, where):
    cfg = tmp_path / "bad.yaml"
    cfg.write_bytes(text.encode("latin-1"))
    p = subprocess.run([str(Path(sys.executable).parent / "unimat"), "train", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert lines[0].startswith(f"unimat train: error: {cfg}{where}")


def test_malformed_override_is_a_config_error():
    from unimat_dist.config import load_config
    from unimat_dist.config.loader import ConfigError
    from unimat_dist.training.config import TrainConfig

    with pytest.raises(ConfigError, match=r"override 'model.arch=\[x': not valid YAML"):
        load_config(TrainConfig, None, ["model.arch=[x"])


def test_local_ray_started_by_unimat_binds_loopback_without_any_environment():
    """What `unimat` commands call to start Ray: in a process whose environment says nothing about binding."""
    code = (
        "import ray\n"
        "from unimat_dist.ray_local import init_ray\n"
        "init_ray('local', num_cpus=1)\n"
        "@ray.remote\n"
        "def ip():\n"
        "    return ray.util.get_node_ip_address()\n"
        "print(ray.get_runtime_context().gcs_address, ray.get(ip.remote()))\n"
        "ray.shutdown()\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    gcs, worker_ip = p.stdout.split()[-2:]
    assert gcs.startswith("127.0.0.1:") and worker_ip == "127.0.0.1"
