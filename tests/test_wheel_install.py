"""The lean install, as a user gets it: build the wheel, install it into a fresh virtualenv with its core
dependencies only (CPU torch first, as the Makefile does), then, from a folder outside the repository:

- ``unimat --version`` prints the package version;
- ``unimat sample --checkpoint perov5_transformer_cpu`` samples from the released checkpoint the wheel carries;
- ``unimat evaluate proxy`` scores them against the bundled Perov-5 test split the wheel carries;
- ``import ray`` / ``deepspeed`` / ``fastapi`` fail there (the install is lean), and ``unimat serve`` says in one
  line which extra to install.

Installs go through pip's configuration (local indexes, ``PIP_FIND_LINKS``, the pip cache): no download when
the packages are cached. ``UNIMAT_SKIP_WHEEL_TEST=1`` skips it (a machine with neither network nor a pip cache).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import unimat_dist

ROOT = Path(__file__).resolve().parents[1]
TORCH = os.environ.get("UNIMAT_WHEEL_TEST_TORCH", "torch==2.13.0")  # the Makefile's CPU wheel

# Python modules of the extras: a lean install has none of them (the core test tools are not installed either)
EXTRA_MODULES = ("ray", "deepspeed", "fastapi", "uvicorn", "starlette", "chgnet", "pyxtal", "webdataset", "pyarrow",
                 "gcsfs", "s3fs", "prometheus_client")

# Imports these modules as if they were not installed, then runs the lean paths' imports and parsers in-process.
_BLOCKED_IMPORTS = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
sys.meta_path.insert(0, Block())
from unimat_dist.cli import build_parser, main
parser = build_parser()  # every subcommand module: none may import an extra at import time
for argv in (["sample", "--checkpoint", "x", "--num", "1"], ["evaluate", "proxy", "--generated", "g",
             "--reference", "r", "--dataset", "perov_5"], ["gallery", "run"], ["data", "list"]):
    parser.parse_args(argv)
import unimat_dist.inference.generator, unimat_dist.evaluation, unimat_dist.evaluation.proxy
import unimat_dist.gallery.build, unimat_dist.crystal_files, unimat_dist.crystal_facts, unimat_dist.inference.writers
leaked = sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)
assert not leaked, leaked
sys.exit(main(["serve", "--checkpoint", "perov5_transformer_cpu"]))
"""


def test_lean_paths_import_no_extra():
    """The modules behind sample / evaluate proxy / gallery import without any extra installed, and a command
    that needs one (serve) fails with one line naming it (fast: in this environment, extras hidden)."""
    env = _clean_env(Path("/nonexistent"))
    proc = subprocess.run([sys.executable, "-c", _BLOCKED_IMPORTS, ",".join(EXTRA_MODULES)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "unimat serve: error: this needs the 'serve' extra (ray is not installed): pip install 'unimat-dist[serve]'"
    ), proc.stderr[-3000:]


def test_missing_extra_messages_and_released_names(tmp_path, monkeypatch):
    from unimat_dist.bundled import released_checkpoints, resolve_released
    from unimat_dist.extras import missing_extra_message

    def err(name):
        return ModuleNotFoundError(f"No module named {name!r}", name=name)

    assert missing_extra_message(err("ray.train"), "train").endswith("pip install 'unimat-dist[ray]'")
    assert "--no-build-isolation 'unimat-dist[train]'" in missing_extra_message(err("deepspeed"), "train")
    assert missing_extra_message(err("ray"), "serve").endswith("pip install 'unimat-dist[serve]'")
    assert missing_extra_message(err("chgnet.model"), "evaluate").endswith("pip install 'unimat-dist[eval]'")
    assert missing_extra_message(err("numpy"), "sample") is None  # a broken core install is not an extra
    released = released_checkpoints()
    assert {"perov5_transformer_cpu", "carbon24_transformer_cpu"} <= set(released)
    assert resolve_released("perov5_transformer_cpu") == str(released["perov5_transformer_cpu"])
    assert resolve_released("perov5_transformer_cpu.pt") == str(released["perov5_transformer_cpu"])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "perov5_transformer_cpu").mkdir()  # a local folder of that name wins over the released file
    assert resolve_released("perov5_transformer_cpu") == "perov5_transformer_cpu"
    assert resolve_released("s3://b/perov5_transformer_cpu") == "s3://b/perov5_transformer_cpu"


def test_licence_changelog_version():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert f"[{unimat_dist.__version__}]" in (ROOT / "CHANGELOG.md").read_text()
    for extra in ("ray", "train", "serve", "eval", "all", "test"):
        assert extra in project["optional-dependencies"], extra
    core = " ".join(project["dependencies"])
    for module in EXTRA_MODULES:
        assert module.replace("_", "-") not in core, module


def _run(cmd, *, cwd, env, timeout=600, check=True):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        command = " ".join(map(str, cmd))
        raise AssertionError(f"{command} -> {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def _source_copy(dest: Path) -> Path:
    """The files git would commit (tracked and untracked-but-not-ignored) copied to ``dest``."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "-c", "-o", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True).stdout.decode()
        files = [f for f in out.split("\0") if f]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: everything but the usual clutter
        files = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()
                 and not {".git", ".venv", "out", "build", "dist", "__pycache__"} & set(p.relative_to(ROOT).parts)]
    for rel in files:
        path = ROOT / rel
        if path.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / rel)
    return dest


def _shipped_splits(wheel: Path) -> set[str]:
    """``NAME:SPLIT`` of the reference fingerprints the wheel ships (evaluation/data/reference_features)."""
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        try:
            index = json.loads(zf.read("unimat_dist/evaluation/data/reference_features/index.json"))
        except KeyError:
            return set()
        names = set(zf.namelist())
    return {f"{e['dataset']}:{e['split']}" for e in index.get("entries", [])
            if f"unimat_dist/evaluation/data/reference_features/{e['file']}" in names}


def _clean_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "VIRTUAL_ENV", "UNIMAT_", "CONDA"))}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", UNIMAT_CACHE=str(tmp / "cache"),
               MPLCONFIGDIR=str(tmp / "mpl"), PYTHONDONTWRITEBYTECODE="1")
    return env


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(os.environ.get("UNIMAT_SKIP_WHEEL_TEST") == "1", reason="UNIMAT_SKIP_WHEEL_TEST=1")
def test_wheel_installs_lean_and_samples_and_evaluates(tmp_path):
    t0 = time.monotonic()
    timings = {}
    env = _clean_env(tmp_path)
    pip = [sys.executable, "-m", "pip"]

    # 1. the wheel (setuptools from this environment: no build isolation, no download), built from a copy of the
    # source tree: setuptools writes build/ next to pyproject.toml and would package stale files left there
    src = _source_copy(tmp_path / "src")
    wheel_dir = tmp_path / "wheel"
    _run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheel_dir, src], cwd=tmp_path, env=env)
    (wheel,) = wheel_dir.glob("unimat_dist-*.whl")
    size_mb = wheel.stat().st_size / 1e6
    assert size_mb < 30, f"wheel is {size_mb:.1f} MB"
    timings["wheel"] = time.monotonic() - t0

    # 2. a fresh virtualenv without pip of its own (this pip installs into it: --python), core deps only
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path, env=env)
    py = venv / "bin" / "python"
    target = [*pip, "--python", py, "install", "-q", "--no-compile", "--prefer-binary"]
    _run([*target, TORCH], cwd=tmp_path, env=env, timeout=900)
    _run([*target, wheel], cwd=tmp_path, env=env, timeout=900)
    _run([*pip, "--python", py, "check"], cwd=tmp_path, env=env)
    timings["install"] = time.monotonic() - t0

    unimat = venv / "bin" / "unimat"
    work = tmp_path / "work"  # outside the repository: nothing can come from the checkout
    work.mkdir()
    where = _run([py, "-c", "import unimat_dist, sys; print(unimat_dist.__file__); print(sys.prefix)"],
                 cwd=work, env=env).stdout.split()
    assert where[0].startswith(str(venv)), where

    # 3. lean: none of the extras came along
    for module in (*EXTRA_MODULES, "pytest"):
        proc = _run([py, "-c", f"import {module}"], cwd=work, env=env, check=False)
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, (module, proc.stderr[-500:])
    proc = _run([unimat, "serve", "--checkpoint", "perov5_transformer_cpu"], cwd=work, env=env, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "unimat serve: error: this needs the 'serve' extra (ray is not installed): pip install 'unimat-dist[serve]'"
    ), proc.stderr[-2000:]

    # 4. unimat --version
    assert _run([unimat, "--version"], cwd=work, env=env).stdout.strip() == f"unimat-dist {unimat_dist.__version__}"

    # 5. a released checkpoint by name, from the wheel's copy (sha256 sidecar verified on load)
    t1 = time.monotonic()
    _run([unimat, "sample", "--checkpoint", "perov5_transformer_cpu", "--num", "4", "--steps", "5",
          "--threads", "1", "--out", work / "samples"], cwd=work, env=env)
    summary = json.loads((work / "samples" / "summary.json").read_text())
    assert str(summary["checkpoint"]).startswith(str(venv)), summary["checkpoint"]
    assert "_bundled" in str(summary["checkpoint"])
    assert (work / "samples" / "samples.extxyz").is_file()  # ase is core: the default --format all writes it
    assert (work / "samples" / "gallery" / "index.html").is_file()
    timings["sample"] = time.monotonic() - t1

    # 6. proxy metrics against the bundled Perov-5 test split: all of it when the wheel ships its reference
    # fingerprints (computing them takes ~20 min on 2 cores), else a few reference crystals
    shipped = _shipped_splits(wheel)
    limit = [] if "perov_5:test" in shipped else ["--limit-reference", "6"]
    t1 = time.monotonic()
    _run([unimat, "evaluate", "proxy", "--generated", work / "samples",  # the run folder: its cif/
          "--reference", "perov_5:test", "--dataset", "perov_5", *limit, "--no-novelty",
          "--workers", "1", "--out", work / "proxy.json"], cwd=work, env=env)
    metrics = json.loads((work / "proxy.json").read_text())
    assert metrics["n_generated"] == 4 and metrics["n_reference"] == (3785 if not limit else 6), metrics
    assert "_bundled" in metrics["reference_source"] and str(venv) in metrics["reference_source"]
    assert 0.0 <= metrics["comp_validity"] <= 1.0 and 0.0 <= metrics["struct_validity"] <= 1.0
    if not limit:
        assert metrics.get("reference_shipped") is True, metrics  # read from the wheel, not recomputed
    timings["evaluate" + ("" if limit else " (full Perov-5 test, shipped fingerprints)")] = time.monotonic() - t1

    # 7. the data sets the wheel carries
    listing = _run([unimat, "data", "list"], cwd=work, env=env).stdout
    assert "perov_5/test: bundled official split" in listing and str(venv) in listing, listing
    assert f"perov5_transformer_cpu: {venv}" in listing, listing  # the released checkpoints, from the wheel
    timings["total"] = time.monotonic() - t0
    print(f"wheel {size_mb:.1f} MB; " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
