"""Step-level batching (``unimat_dist/generation/continuous.py``), without Ray: jobs join a running
denoising loop, each row at its own timestep, and every job's crystals equal those it gets alone.

An untrained tiny model with perturbed weights (so outputs depend on every input) suffices: the
machinery is what is tested. The served path (Ray Serve, HTTP) is in tests/test_serve.py.
"""
from __future__ import annotations

import asyncio
import threading

import pytest
import torch
from generation_fixtures import (
    assert_same_crystals,
    collect,
    make_job,
    mixed_jobs,
    perturbed_tiny_generator,
    run_next_to_a_cancelled_job,
)

from unimat_dist.generation import GenerationJob, run_jobs
from unimat_dist.generation.continuous import ContinuousSampler
from unimat_dist.model import Condition
from unimat_dist.inference import StructureGenerator

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def g() -> StructureGenerator:
    return perturbed_tiny_generator()



def test_every_job_gets_the_crystals_it_gets_alone_whatever_joins_when(g):
    alone = [run_jobs(g, [job])[0] for job in mixed_jobs(g)]
    steps: list[tuple[int, int]] = []
    engine = ContinuousSampler(g, max_requests=32, max_rows=64, on_step=lambda r, j, s: steps.append((r, j)))
    try:
        # all at once, then staggered so that jobs join a loop that is already running
        for delays in (None, [0.0, 0.02, 0.05, 0.08, 0.1, 0.15]):
            results = collect(engine, mixed_jobs(g), delays)
            for (batch, stats, error), ref, job in zip(results, alone, mixed_jobs(g)):
                assert error is None
                assert stats.steps == job.steps + (job.restart[1] if job.restart else 0)  # + a restart pass
                assert_same_crystals(g, batch, ref)
            assert max(j for _, j in steps) > 1  # jobs with different samplers and steps shared evaluations
    finally:
        engine.close()


def test_a_short_job_joins_and_leaves_a_long_running_one(g):
    long_job = make_job(g, 1, "LiFePO4", seed=1, sampler="ddpm", steps=50)
    short_job = make_job(g, 1, "SrTiO3", seed=2, steps=3)
    finished: list[str] = []
    engine = ContinuousSampler(g, max_requests=8, max_rows=64)
    try:
        events = {name: threading.Event() for name in ("long", "short")}
        stats = {}

        def cb(name):
            def done(batch, s, error):
                assert error is None
                finished.append(name)
                stats[name] = s
                events[name].set()
            return done

        engine.submit(long_job, cb("long"))
        threading.Timer(0.05, engine.submit, (short_job, cb("short"))).start()
        assert events["short"].wait(60) and events["long"].wait(60)
    finally:
        engine.close()
    assert finished == ["short", "long"]  # it did not wait for the 50-step loop to end
    assert stats["short"].peak_requests == 2 and stats["short"].steps == 3


def test_limits_on_requests_and_rows(g):
    seen: list[tuple[int, int]] = []
    engine = ContinuousSampler(g, max_requests=1, max_rows=64, on_step=lambda r, j, s: seen.append((r, j)))
    try:
        results = collect(engine, [make_job(g, 2, None, seed=k, steps=3) for k in range(4)])
    finally:
        engine.close()
    assert {j for _, j in seen} == {1} and all(r[1].peak_requests == 1 for r in results)  # the unbatched baseline

    seen.clear()
    admitted: list[int] = []
    engine = ContinuousSampler(g, max_requests=32, max_rows=5, on_admit=admitted.append,
                               on_step=lambda r, j, s: seen.append((r, j)))
    try:
        jobs = [make_job(g, 2, None, seed=1, steps=3), make_job(g, 8, None, seed=2, steps=3),
                make_job(g, 2, None, seed=3, steps=3)]
        results = collect(engine, jobs)
    finally:
        engine.close()
    assert all(err is None for _, _, err in results)
    assert max(r for r, _ in seen) == 8  # the 8-row job ran alone (it is larger than max_rows) ...
    assert all(r <= 5 for r, j in seen if j > 1)  # ... every shared evaluation kept within max_rows
    assert sum(admitted) == 3


def test_a_broken_job_fails_alone_and_the_loop_keeps_serving(g):
    bad = make_job(g, 1, "LiFePO4", seed=1)
    bad.condition = Condition.unconditional(1, (2, 3, 3), 1)  # the wrong (L, H, W) for this model
    engine = ContinuousSampler(g, max_requests=8, max_rows=64)
    try:
        with pytest.raises(ValueError, match="not prepared"):
            engine.submit(GenerationJob(1), lambda *a: None)
        results = collect(engine, [make_job(g, 1, "SrTiO3", seed=2, steps=5), bad,
                                   make_job(g, 2, None, seed=3, steps=4)])
        assert results[1][2] is not None and results[1][0] is None
        assert results[0][2] is None and results[2][2] is None
        assert len(g.to_structures(results[2][0])) == 2

        async def one():
            return await engine.generate(make_job(g, 1, "FeO", seed=4, steps=3))

        batch, stats = asyncio.run(one())  # the asyncio form used by the service
        assert stats.steps == 3 and g.to_structures(batch)[0].composition.reduced_formula == "FeO"
        assert engine.alive  # the replica's health check
    finally:
        engine.close()
    assert not engine.alive
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit(make_job(g, 1, None), lambda *a: None)


def test_a_cancelled_job_leaves_the_loop_and_the_others_finish(g):
    """A caller that goes away (asyncio cancellation, as when an HTTP client disconnects) frees the device:
    its job is dropped at the next step, queued or running, and the jobs beside it are unaffected."""
    steps: list[int] = []
    engine = ContinuousSampler(g, max_requests=8, max_rows=64, on_step=lambda r, j, s: steps.append(j))
    try:
        batch, stats, alone = run_next_to_a_cancelled_job(engine, g, 0.05)
        assert_same_crystals(g, batch, alone)
        assert stats.steps == 10
        assert len(steps) < 50  # the 50-step job did not run to its end
        # a job cancelled while still queued never starts; its callback hears why
        heard: list = []
        done = threading.Event()
        blocker = make_job(g, 1, None, seed=3, steps=30)
        engine2 = ContinuousSampler(g, max_requests=1, max_rows=64)
        try:
            engine2.submit(blocker, lambda *a: done.set())
            ticket = engine2.submit(make_job(g, 1, None, seed=4, steps=3), lambda b, s, e: heard.append((b, s, e)))
            engine2.cancel(ticket)
            assert done.wait(60)
        finally:
            engine2.close()
        assert len(heard) == 1 and heard[0][0] is None and heard[0][1].steps == 0
        assert type(heard[0][2]).__name__ == "JobCancelled"
    finally:
        engine.close()
