"""The documented cluster path, run as written on a local Ray head (127.0.0.1): a separate Python environment
with every dependency but *not* unimat-dist starts ``ray start --head``; ``ray job submit --working-dir .
-- python -m unimat_dist ...`` ships the package with the job; relative outputs land under ``UNIMAT_STORAGE``
(docs/cluster.md), or the job is refused with the key named when it is unset.

Plus the unit checks of ``unimat_dist.config.job_paths`` (no Ray)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pytest

from unimat_dist.config import ConfigError
from conftest import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- unit checks
@pytest.fixture
def in_ray_job(tmp_path, monkeypatch):
    """This process looks like the entrypoint of a submitted Ray job running in ``tmp_path``."""
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    monkeypatch.delenv("UNIMAT_STORAGE", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_outside_a_ray_job_relative_paths_are_unchanged(tmp_path, monkeypatch):
    from unimat_dist.training import load_train_config

    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.setenv("UNIMAT_STORAGE", str(tmp_path / "storage"))
    monkeypatch.chdir(tmp_path)
    assert load_train_config(None, ["out_dir=out/run"]).out_dir == "out/run"


def test_in_a_ray_job_relative_outputs_are_refused_naming_the_key(in_ray_job):
    from unimat_dist.batch_generation import load_batch_config
    from unimat_dist.training import load_train_config

    with pytest.raises(ConfigError, match=r"^out_dir: 'out/run' is a relative path.*UNIMAT_STORAGE"):
        load_train_config(None, ["out_dir=out/run"])
    with pytest.raises(ConfigError, match=r"^distributed.storage_path: 'ray'"):
        load_train_config(None, ["out_dir=s3://b/run", "distributed.storage_path=ray"])
    with pytest.raises(ConfigError, match=r"^output.uri: 'out/gen' is a relative path"):
        load_batch_config(None, ["output.uri=out/gen", "model.checkpoint=/abs/ckpt"])
    # absolute paths and URIs pass unchanged
    cfg = load_train_config(None, ["out_dir=gs://b/run", f"checkpoint_dir={in_ray_job / 'c'}"])
    assert cfg.out_dir == "gs://b/run" and cfg.checkpoint_dir == str(in_ray_job / "c")


def test_in_a_ray_job_relative_paths_go_under_unimat_storage(in_ray_job, monkeypatch):
    from unimat_dist.batch_generation import load_batch_config
    from unimat_dist.training import load_train_config

    storage = in_ray_job / "storage"
    monkeypatch.setenv("UNIMAT_STORAGE", str(storage))
    cfg = load_train_config(None, ["out_dir=out/run", "data.manifest=shards/mp20"])
    assert cfg.out_dir == str(storage / "out" / "run")
    assert cfg.data.manifest == str(storage / "shards" / "mp20")  # not in the working dir: an earlier job's output
    (in_ray_job / "cluster").mkdir()
    (in_ray_job / "cluster" / "req.csv").write_text("composition\nNaCl\n")
    b = load_batch_config(None, ["output.uri=out/gen", "model.checkpoint=out/run",
                                 "requests.uri=cluster/req.csv"])
    assert b.output.uri == str(storage / "out" / "gen") and b.model.checkpoint == str(storage / "out" / "run")
    assert b.requests.uri == "cluster/req.csv"  # shipped with the working dir: stays relative to it
    assert load_train_config(None, ["out_dir=file://out/run"]).out_dir == str(storage / "out" / "run")
    monkeypatch.setenv("UNIMAT_STORAGE", "s3://bucket/unimat/")
    assert load_train_config(None, ["out_dir=out/run"]).out_dir == "s3://bucket/unimat/out/run"
    monkeypatch.setenv("UNIMAT_STORAGE", "relative/dir")
    with pytest.raises(ConfigError, match="UNIMAT_STORAGE='relative/dir': must be an absolute path or a URI"):
        load_train_config(None, ["out_dir=out/run"])


def test_in_a_ray_job_a_relative_out_flag_goes_under_a_local_storage_or_is_refused(in_ray_job, monkeypatch, capsys):
    """``--out`` flags (sample, quickstart, ...) write local folders: under a local UNIMAT_STORAGE, else refused."""
    from unimat_dist.cli import main

    argv = ["sample", "--checkpoint", "perov5_transformer_cpu", "--num", "1", "--out", "out/s"]
    assert main(argv) == 2
    assert "--out 'out/s' is a relative path" in capsys.readouterr().err
    monkeypatch.setenv("UNIMAT_STORAGE", "s3://bucket/unimat")
    assert main(argv) == 2 and "set UNIMAT_STORAGE to such a local path" in capsys.readouterr().err
    assert not (in_ray_job / "out").exists()
    storage = in_ray_job / "storage"
    monkeypatch.setenv("UNIMAT_STORAGE", str(storage))
    assert main(argv + ["--steps", "5", "--no-gallery"]) == 0
    assert (storage / "out" / "s" / "summary.json").exists() and not (in_ray_job / "out").exists()


def test_python_dash_m_unimat_dist_is_the_unimat_command(tmp_path):
    r = subprocess.run([sys.executable, "-m", "unimat_dist", "--help"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "usage: unimat" in r.stdout and "generate-batch" in r.stdout


# --------------------------------------------------------------------------------- end to end, ray job submit


def _deps_only_env(where: Path) -> Path:
    """A virtualenv that sees this environment's site-packages (every dependency: torch, Ray, pymatgen, ...)
    without processing its .pth files, so unimat-dist's editable install is not visible."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
    py = where / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    deps = sysconfig.get_paths()["purelib"]
    Path(purelib, "_unimat_deps_only.pth").write_text(f"import sys; sys.path.append({deps!r})\n")
    return py


def _our_pids(marker: str) -> list[int]:
    """Processes started for this test: their working directory or command line names ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(marker) or marker in cmd:
            pids.append(int(entry.name))
    return pids


def _stop(marker: str) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 1.0)):
        pids = _our_pids(marker)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.time() + wait
        while pids and time.time() < deadline and _our_pids(marker):
            time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to stop the Ray it started")
def test_documented_ray_job_submit_from_an_environment_without_the_package():
    # short paths: Ray's unix sockets live under --temp-dir (108-byte limit)
    tmp = Path(tempfile.mkdtemp(prefix="uj", dir="/tmp"))
    marker = str(tmp)
    try:
        py = _deps_only_env(tmp / "venv")
        venv_bin = str(Path(sys.executable).parent)
        path = os.pathsep.join([str(py.parent)] + [p for p in os.environ.get("PATH", "").split(os.pathsep)
                                                   if p and Path(p).resolve() != Path(venv_bin).resolve()])
        env = {k: v for k, v in os.environ.items()
               if k not in ("RAY_ADDRESS", "PYTHONPATH", "VIRTUAL_ENV", "UNIMAT_STORAGE")}
        env.update(PATH=path, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled",
                   OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0")
        # the environment really lacks the package: no module, no `unimat` script
        r = subprocess.run([str(py), "-c", "import unimat_dist"], cwd=tmp, env=env, capture_output=True, text=True)
        assert r.returncode != 0 and "No module named 'unimat_dist'" in r.stderr
        assert shutil.which("unimat", path=path) is None
        r = subprocess.run([str(py), "-c", "import ray, torch, pymatgen, deepspeed"], cwd=tmp, env=env)
        assert r.returncode == 0

        ray_cli = [str(py), "-m", "ray.scripts.scripts"]
        dash = free_port()
        started = time.time()
        subprocess.run(
            [*ray_cli, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
             f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
             "--num-cpus=3", f"--temp-dir={tmp / 'ray'}", "--disable-usage-stats"],
            cwd=tmp, env=env, check=True, timeout=180, capture_output=True,
        )
        storage = tmp / "storage"
        submit = [*ray_cli, "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", "."]
        runtime_env = ["--runtime-env-json", json.dumps({"env_vars": {"UNIMAT_STORAGE": str(storage),
                                                                      "OMP_NUM_THREADS": "1"}})]

        def job(args: list[str], timeout: float) -> subprocess.CompletedProcess:
            return subprocess.run([*submit, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=timeout)

        # without UNIMAT_STORAGE: a relative output is refused, naming the key, before any work starts
        r = job(["--", "python", "-m", "unimat_dist", "generate-batch", "--config",
                 "cluster/jobs/generate_tiny_cpu.yaml"], 120)
        assert r.returncode != 0, r.stdout[-3000:]
        assert "output.uri: 'out/generated_tiny' is a relative path" in r.stdout + r.stderr, r.stdout[-3000:]

        # docs/cluster.md: train (trainer: ray, 2 workers) then generate-batch from its checkpoint
        r = job([*runtime_env, "--", "python", "-m", "unimat_dist", "train", "--config",
                 "cluster/jobs/train_tiny_ray_cpu.yaml", "train.steps=4", "train.ckpt_every=2", "train.val_every=0",
                 "train.log_every=1", "train.val_batches=1", "train.global_batch_size=16",
                 "train.micro_batch_size=8", "optim.warmup_steps=2", "data.limit_train=64", "data.limit_val=16",
                 "distributed.metrics_port=null"], 240)
        assert r.returncode == 0 and "succeeded" in r.stdout + r.stderr, (r.stdout + r.stderr)[-4000:]
        run = storage / "out" / "train_tiny_ray_cpu"  # out_dir: out/train_tiny_ray_cpu under UNIMAT_STORAGE
        assert (run / "inference.pt").is_file() and json.loads((run / "summary.json").read_text())["steps"] == 4
        assert any((run / "ray" / "train_tiny_ray_cpu").glob("checkpoint_*"))  # Ray Train storage: <out_dir>/ray

        r = job([*runtime_env, "--", "python", "-m", "unimat_dist", "generate-batch", "--config",
                 "cluster/jobs/generate_tiny_cpu.yaml", "model.checkpoint=out/train_tiny_ray_cpu",
                 "requests.limit=2", "sampling.steps=3"], 180)
        out = r.stdout + r.stderr
        assert r.returncode == 0 and "succeeded" in out, out[-4000:]
        assert "``concurrency`` is deprecated" not in out  # the actor pool uses compute=ActorPoolStrategy
        gen = storage / "out" / "generated_tiny"  # output.uri: out/generated_tiny under UNIMAT_STORAGE
        manifest = json.loads((gen / "manifest.json").read_text())
        assert manifest["checkpoint"] == str(run / "inference.pt")  # model.checkpoint found under UNIMAT_STORAGE
        assert manifest["shards"] and all((gen / s["path"]).is_file() for s in manifest["shards"])
        assert len((gen / "summary.csv").read_text().splitlines()) > 1
        print(f"ray start + 3 submitted jobs: {time.time() - started:.0f} s")
    finally:
        _stop(marker)
        shutil.rmtree(tmp, ignore_errors=True)
