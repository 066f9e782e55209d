"""Fair sharing of the running loop's evaluations (issue 16, ``ContinuousSampler(share_rows=...)``): a small
job that joins a large one is not slowed to the large one's evaluation size, and the large one's crystals
do not change when its steps are spread over several evaluations.

Deterministic: the small job is submitted from the loop's own ``on_step`` hook at a chosen evaluation, and
the properties are counts (evaluations, rows per evaluation), never seconds. An untrained tiny model with
perturbed weights (``generation_fixtures``), as in tests/test_continuous_batching.py.
"""
from __future__ import annotations

import threading

import pytest
import torch
from generation_fixtures import assert_same_crystals, make_job, perturbed_tiny_generator

from unimat_dist.generation import run_jobs
from unimat_dist.generation.continuous import SHARE_ROWS_AUTO, ContinuousSampler

torch.set_num_threads(1)

BIG_ROWS, BIG_STEPS = 24, 20  # the "maximal" job of this test (DDPM: an ancestral draw at every step)
SMALL_STEPS = 5
JOIN_AT = 3  # the small job is submitted right after the big one's 3rd evaluation


@pytest.fixture(scope="module")
def g():
    return perturbed_tiny_generator()


def big_job(g):
    return make_job(g, BIG_ROWS, "LiFePO4", seed=11, sampler="ddpm", steps=BIG_STEPS)


def small_job(g):
    return make_job(g, 1, "SrTiO3", seed=12, steps=SMALL_STEPS)


def run_big_then_small(g, share_rows):
    """The big job, then the small one submitted from the hook after evaluation ``JOIN_AT``: the rows of
    every evaluation, the evaluation at which the small job was submitted, and both jobs' results."""
    evals: list[int] = []  # rows of each evaluation
    submitted_after: list[int] = []
    results: dict[str, tuple] = {}
    done = {name: threading.Event() for name in ("big", "small")}

    def callback(name):
        def cb(batch, stats, error):
            results[name] = (batch, stats, error, len(evals))
            done[name].set()
        return cb

    engine: ContinuousSampler | None = None

    def on_step(rows, jobs, seconds):
        evals.append(rows)
        if len(evals) == JOIN_AT:  # on the loop's thread: admitted at the very next step boundary
            submitted_after.append(len(evals))
            engine.submit(small_job(g), callback("small"))

    engine = ContinuousSampler(g, max_requests=8, max_rows=64, share_rows=share_rows, on_step=on_step)
    try:
        engine.submit(big_job(g), callback("big"))
        assert done["big"].wait(120) and done["small"].wait(120)
    finally:
        engine.close()
    return evals, submitted_after[0], results


def test_a_small_job_joining_a_big_one_runs_at_a_small_evaluation_size(g):
    evals, joined, results = run_big_then_small(g, share_rows=4)
    batch, stats, error, finished_at = results["small"]
    assert error is None and stats.steps == SMALL_STEPS
    # admitted at the next evaluation and done after exactly its own step count of evaluations ...
    assert stats.evaluations == SMALL_STEPS and finished_at == joined + SMALL_STEPS
    # ... each of them holding its 1 row and 4 of the big job's (not all 24)
    assert stats.peak_requests == 2 and stats.peak_rows == 1 + 4
    assert evals[joined:finished_at] == [1 + 4] * SMALL_STEPS
    assert evals[:joined] == [BIG_ROWS] * joined  # alone, the big job is never split
    assert_same_crystals(g, batch, run_jobs(g, [small_job(g)])[0])

    # the big job kept advancing at every evaluation (4 rows of its step each time while shared) and its
    # crystals are those it gets alone, ancestral draws included
    big, big_stats, big_error, _ = results["big"]
    assert big_error is None and big_stats.steps == BIG_STEPS
    # 3 steps alone, 5 shared evaluations of 4 rows (20 of the 24 rows of step 4), the last 4 rows alone,
    # then the other 16 steps alone
    assert big_stats.evaluations == len(evals) == BIG_STEPS + SMALL_STEPS
    assert_same_crystals(g, big, run_jobs(g, [big_job(g)])[0])


def test_without_a_share_limit_the_small_job_pays_for_every_row_of_the_big_one(g):
    """The behaviour before issue 16, kept as ``share_rows=None``: same number of evaluations, each 25 rows."""
    evals, joined, results = run_big_then_small(g, share_rows=None)
    _, stats, error, finished_at = results["small"]
    assert error is None and stats.evaluations == SMALL_STEPS and finished_at == joined + SMALL_STEPS
    assert stats.peak_rows == 1 + BIG_ROWS and evals[joined:finished_at] == [1 + BIG_ROWS] * SMALL_STEPS


def test_the_share_is_the_smallest_job_with_a_floor(g):
    """Jobs of similar size are not split (share = the smallest job's rows), and the floor keeps a big job's
    slices from shrinking to a small job's size."""
    seen: list[tuple[int, int]] = []
    jobs = [make_job(g, 6, None, seed=21, steps=4), make_job(g, 5, None, seed=22, steps=4),
            make_job(g, 12, "FeO", seed=23, sampler="ddpm", steps=4)]
    events = [threading.Event() for _ in jobs]
    out: list = [None] * len(jobs)
    engine: ContinuousSampler | None = None

    def callback(k):
        def cb(batch, stats, error):
            out[k] = (batch, stats, error)
            events[k].set()
        return cb

    def on_step(rows, n_jobs, seconds):
        seen.append((rows, n_jobs))
        if len(seen) == 1:  # queued together during the gate job's only step: admitted together after it
            for k, job in enumerate(jobs):
                engine.submit(job, callback(k))

    engine = ContinuousSampler(g, max_requests=8, max_rows=64, share_rows=2, on_step=on_step)
    try:
        engine.submit(make_job(g, 1, None, seed=20, steps=1), lambda *a: None)  # the gate
        assert all(e.wait(120) for e in events)
    finally:
        engine.close()
    # shares of max(2, 5) = 5 rows: 5 + 5 + 5, until the 5-row job leaves (then max(2, 6) = 6)
    assert seen[0] == (1, 1) and seen[1] == (15, 3)
    assert all(rows <= 15 for rows, n_jobs in seen if n_jobs > 1)
    for (batch, stats, error), job in zip(out, jobs):
        assert error is None and stats.steps == 4
        assert_same_crystals(g, batch, run_jobs(g, [job])[0])


def test_share_rows_is_checked_and_auto_follows_the_device(g):
    for bad in (0, -1, 2.5, "8"):
        with pytest.raises(ValueError, match="share_rows"):
            ContinuousSampler(g, share_rows=bad)
    engine = ContinuousSampler(g)
    engine.close()
    assert engine.share_rows == SHARE_ROWS_AUTO["cpu"] == 8


def test_the_sampling_process_applies_the_share(g, tmp_path):
    """``ProcessSampler`` hands ``share_rows`` to the loop in its child process (the service's engine)."""
    from generation_fixtures import collect

    from unimat_dist.generation.engine_process import ProcessSampler
    from unimat_dist.inference import inference_payload, save_inference_checkpoint

    d = g.diffusion
    path = tmp_path / "inference.pt"
    save_inference_checkpoint(inference_payload(d.denoiser, d.config(), g.spec, g.normalizer, g.scaler, step=1,
                                                weights="model"), str(path))
    engine = ProcessSampler({"checkpoint": str(path), "device": "cpu"}, max_requests=8, max_rows=64, share_rows=4,
                            torch_threads=1)
    try:
        # submitted back to back: the small job joins within the big one's first few of its 50 alone-steps
        big, small = collect(engine, [make_job(g, 48, None, seed=31, sampler="ddpm", steps=50), small_job(g)])
    finally:
        engine.close()
    assert big[2] is None and small[2] is None
    assert small[1].peak_requests == 2 and small[1].peak_rows == 1 + 4 and small[1].evaluations == SMALL_STEPS
    assert big[1].steps == 50 and big[1].peak_rows == 48 and engine.info["share_rows"] == 4


def test_a_job_cancelled_in_the_middle_of_a_split_step_leaves_cleanly(g):
    """Cancelled while its step is half done (some rows advanced, the rest not): it leaves at the next
    boundary and the job beside it finishes with the crystals it gets alone."""
    results: dict = {}
    done = threading.Event()
    evals: list[int] = []
    tickets: dict[str, int] = {}
    big_submitted = threading.Event()
    engine: ContinuousSampler | None = None

    def small():
        return make_job(g, 1, "SrTiO3", seed=41, steps=8)

    def on_step(rows, jobs, seconds):
        evals.append(rows)
        if len(evals) == 1:  # after the big job's first (whole, alone) step: the small one joins
            assert big_submitted.wait(60)  # (its ticket is known)
            tickets["small"] = engine.submit(small(), cb("small"))
        if len(evals) == 4:  # 3 shared evaluations: 3 x 2 of the big job's 12 rows have taken step 2
            engine.cancel(tickets["big"])

    def cb(name):
        def f(batch, stats, error):
            results[name] = (batch, stats, error)
            if len(results) == 2:
                done.set()
        return f

    engine = ContinuousSampler(g, max_requests=8, max_rows=64, share_rows=2, on_step=on_step)
    try:
        tickets["big"] = engine.submit(make_job(g, 12, None, seed=42, sampler="ddpm", steps=40), cb("big"))
        big_submitted.set()
        assert done.wait(120)
    finally:
        engine.close()
    assert type(results["big"][2]).__name__ == "JobCancelled" and results["big"][1].steps == 1
    assert results["small"][2] is None and results["small"][1].evaluations == 8
    assert evals == [12, 3, 3, 3] + [1] * 5
    assert_same_crystals(g, results["small"][0], run_jobs(g, [small()])[0])
