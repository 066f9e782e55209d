"""The running loop in a child process (``unimat_dist/generation/engine_process.py``), without Ray: the
same crystals as in-process sampling, cancellation through the pipe, a child that dies or cannot start.

A real child process (``spawn``) loading a real checkpoint file: the perturbed tiny model of
``generation_fixtures`` saved in the inference format. The served path (Ray Serve, whose replicas run
this engine by default) is in tests/test_serve.py.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch
from generation_fixtures import (
    assert_same_crystals,
    collect,
    make_job,
    mixed_jobs,
    run_next_to_a_cancelled_job,
    save_perturbed_tiny_checkpoint,
)

from unimat_dist.generation import open_generator, run_jobs
from unimat_dist.generation.continuous import JobCancelled
from unimat_dist.generation.engine_process import ProcessSampler
from unimat_dist.model import Condition

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("engine-process") / "inference.pt"
    return str(save_perturbed_tiny_checkpoint(path, step=7, weights="model"))


@pytest.fixture(scope="module")
def g(checkpoint):
    return open_generator(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def engine(checkpoint):
    steps: list[tuple[int, int]] = []
    admitted: list[int] = []
    e = ProcessSampler({"checkpoint": checkpoint, "device": "cpu"}, max_requests=32, max_rows=64, torch_threads=1,
                       on_admit=admitted.append, on_step=lambda r, j, s: steps.append((r, j)))
    e.steps, e.admitted = steps, admitted  # what the parent's hooks saw
    yield e
    e.close()


def test_the_child_gives_every_job_the_crystals_it_gets_in_process(engine, g):
    assert engine.alive and engine.pid != os.getpid()
    assert engine.info["device"] == "cpu" and engine.info["precision"] == "fp32" and engine.info["torch_threads"] == 1
    alone = [run_jobs(g, [job])[0] for job in mixed_jobs(g)]
    for delays in (None, [0.0, 0.02, 0.05, 0.08, 0.1, 0.15]):  # together, then joining a running loop
        results = collect(engine, mixed_jobs(g), delays)
        for (batch, stats, error), ref, job in zip(results, alone, mixed_jobs(g)):
            assert error is None
            assert stats.steps == job.steps + (job.restart[1] if job.restart else 0)  # + a restart pass
            assert_same_crystals(g, batch, ref)
    # the hooks ran in this process: evaluations were shared, admissions counted every job
    assert max(j for _, j in engine.steps) > 1
    assert sum(engine.admitted) == 2 * len(alone)
    assert engine.load == (0, 0)


def test_cancel_and_the_asyncio_form_through_the_pipe(engine, g):
    engine.steps.clear()
    batch, stats, alone = run_next_to_a_cancelled_job(engine, g, 0.1)
    assert_same_crystals(g, batch, alone)
    assert stats.steps == 10
    time.sleep(0.2)
    assert len(engine.steps) < 50  # the 50-step job was dropped in the child

    # a job cancelled by its ticket hears JobCancelled, pickled back from the child
    heard: list = []
    done = threading.Event()
    ticket = engine.submit(make_job(g, 1, None, seed=3, steps=45),
                           lambda b, s, e: (heard.append((b, s, e)), done.set()))
    engine.cancel(ticket)
    assert done.wait(30)
    batch, stats, error = heard[0]
    assert batch is None and isinstance(error, JobCancelled) and stats.steps < 45


def test_a_broken_job_fails_alone_in_the_child(engine, g):
    bad = make_job(g, 1, "LiFePO4", seed=1)
    bad.condition = Condition.unconditional(1, (2, 3, 3), 1)  # the wrong (L, H, W) for this model
    results = collect(engine, [make_job(g, 1, "SrTiO3", seed=2, steps=5), bad, make_job(g, 2, None, seed=3, steps=4)])
    assert results[1][0] is None and isinstance(results[1][2], Exception)
    assert results[0][2] is None and results[2][2] is None
    assert len(g.to_structures(results[2][0])) == 2
    assert engine.alive


def test_a_child_that_dies_fails_its_jobs_and_reports_it(checkpoint, g):
    e = ProcessSampler({"checkpoint": checkpoint, "device": "cpu"}, max_requests=8, torch_threads=1)
    try:
        heard: list = []
        done = threading.Event()
        e.submit(make_job(g, 2, None, seed=7, sampler="ddpm", steps=50),
                 lambda b, s, err: (heard.append(err), done.set()))
        time.sleep(0.2)
        os.kill(e.pid, signal.SIGKILL)  # e.g. the kernel's OOM killer
        assert done.wait(30)
        assert isinstance(heard[0], RuntimeError) and "exited with code -9" in str(heard[0])
        assert not e.alive  # the Serve replica's health check fails and Serve replaces it
        with pytest.raises(RuntimeError, match="exited with code"):
            e.submit(make_job(g, 1, None), lambda *a: None)
    finally:
        e.close()


def test_close_finishes_what_was_submitted(checkpoint, g):
    e = ProcessSampler({"checkpoint": checkpoint, "device": "cpu"}, max_requests=8, torch_threads=1)
    results = []
    e.submit(make_job(g, 1, "FeO", seed=1, steps=20), lambda b, s, err: results.append((b, err)))
    e.close(timeout=60)
    assert len(results) == 1 and results[0][1] is None
    assert g.to_structures(results[0][0])[0].composition.reduced_formula == "FeO"
    assert not e.alive
    with pytest.raises(RuntimeError, match="closed"):
        e.submit(make_job(g, 1, None), lambda *a: None)


def test_a_child_that_cannot_load_the_model_raises_its_error(tmp_path):
    with pytest.raises(RuntimeError, match="could not start(.|\n)*no checkpoint at"):
        ProcessSampler({"checkpoint": str(tmp_path / "missing.pt"), "device": "cpu"})
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="could not start"):
        ProcessSampler({"checkpoint": str(tmp_path / "junk.pt"), "device": "cpu"})


def test_the_child_exits_when_its_parent_is_killed(checkpoint, g, tmp_path):
    """A replica killed outright (no __del__, no atexit) must not leave its sampling process holding the
    device: the child sees the pipe close and exits at once, even mid-job."""
    import subprocess
    import sys

    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, time\n"
        "from unimat_dist.generation.engine_process import ProcessSampler\n"
        "from unimat_dist.generation import open_generator\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from generation_fixtures import make_job\n"
        "if __name__ == '__main__':\n"
        "    e = ProcessSampler({'checkpoint': sys.argv[1], 'device': 'cpu'}, torch_threads=1)\n"
        "    g = open_generator(sys.argv[1], device='cpu')\n"
        "    e.submit(make_job(g, 2, None, seed=1, sampler='ddpm', steps=50), lambda *a: None)\n"
        "    print(e.pid, flush=True)\n"
        "    time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, str(script), checkpoint, os.path.dirname(__file__)],
                              stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        os.kill(child, 0)  # running
        parent.kill()
        parent.wait(10)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with open(f"/proc/{child}/stat") as fh:
                    if fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):  # exited, not yet reaped
                        break
            except FileNotFoundError:
                break
            time.sleep(0.1)
        else:
            os.kill(child, signal.SIGKILL)
            pytest.fail("the sampling process outlived its parent by 10 s")
    finally:
        parent.kill()
