"""A tiny generator trained in the test session, shared by the serving and batch-generation tests.

The tiny U-Net is trained for 60 steps (batch 8) on the first 8 Perov-5 training crystals in the reduced grid
of their 18 elements (L = 3, T = 100), which takes seconds on a CPU: enough for a real checkpoint of the
training loop's format with a property (``heat_ref``), not for good crystals. Exact-count requests are
honoured whatever the weights (the sampler fixes the composition), so composition checks are exact.

The run is written once per pytest session under the session's base temp directory and reused by
every module that asks for it (``COMPLETE`` marker written last).
"""
from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# the elements of the first 8 Perov-5 training crystals (the bundled val split stands in for train)
ELEMENTS = ["Cd", "Cu", "N", "V", "Ir", "O", "Ru", "W", "F", "Mg", "Ti", "S", "As", "Sc", "Co", "Pt", "La", "Sn"]
COMPOSITIONS = ["CdCuN3", "VIrO3", "RuWNOF", "MgTiSO2", "CuAsN2O", "ScCoO2F", "RuPtSO2", "LaSnNOF"]
TIMESTEPS = 100
TRAIN_STEPS = 60  # ~20 s on 2 CPU cores; enough for most exact-count crystals to have distinct sites


def train_tiny_generator(run_dir: Path, cache_dir: Path) -> Path:
    """Train (or reuse) the tiny run; returns the run directory (its newest checkpoint is loadable)."""
    marker = run_dir / "COMPLETE"
    if marker.exists():
        return run_dir
    from unimat_dist.launch import run_training
    from unimat_dist.training import load_train_config

    cfg = load_train_config(ROOT / "cluster" / "jobs" / "train_tiny_cpu.yaml", [
        f"out_dir={run_dir}", f"data.cache_dir={cache_dir}", "data.limit_train=8", "data.limit_val=4",
        f"data.elements=[{','.join(ELEMENTS)}]", "data.properties=[heat_ref]", f"diffusion.timesteps={TIMESTEPS}",
        "diffusion.loss_weighting=condition", "augment.shuffle_slots=none", "augment.translate=false",
        "conditioning.p_unconditional=0.3", "conditioning.p_element_types=0.2", "conditioning.p_exact_counts=0.5",
        "optim.lr=2e-3", "optim.warmup_steps=4", "optim.ema_decay=0.9", f"train.steps={TRAIN_STEPS}",
        "train.global_batch_size=8", "train.val_every=0", "train.val_batches=1", "train.ckpt_every=0",
        "train.log_every=8", "train.progress=false", "train.num_threads=2",
    ])
    run_training(cfg)
    marker.write_text("ok\n")
    return run_dir


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """Run directory of the session's tiny generator (trained on first use)."""
    base = tmp_path_factory.getbasetemp()
    return train_tiny_generator(base / "tiny-generator-run", base / "tiny-generator-cache")


# ------------------------------------------------------------------ an untrained generator (no Ray, no training)
def perturbed_tiny_unet(spec, num_properties: int):
    """The tiny U-Net for ``spec`` with random weights (seed 0) perturbed by N(0, 0.05) noise, so that its
    outputs depend on every input (the zero-initialised blocks of a fresh network would hide them)."""
    import torch

    from unimat_dist.model import build_unet, get_preset

    torch.manual_seed(0)
    net = build_unet(get_preset("tiny"), spec, num_properties=num_properties)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net


def perturbed_tiny_generator():
    """A generator over ``perturbed_tiny_unet`` on a 6-element reduced table, L = 4, T = 50, one property:
    for tests of the sampling machinery, not of crystals."""
    from unimat_dist.diffusion import GaussianDiffusion
    from unimat_dist.model import PropertyScaler
    from unimat_dist.representation import Normalizer, spec_for_elements
    from unimat_dist.inference import StructureGenerator

    spec = spec_for_elements(["Li", "Fe", "O", "P", "Sr", "Ti"], 4)
    net = perturbed_tiny_unet(spec, num_properties=1)
    d = GaussianDiffusion(net, spec.allowed_cells, timesteps=50, schedule="cosine")
    return StructureGenerator(d, spec, Normalizer.default(spec), PropertyScaler(("band_gap",), (1.0,), (0.5,)))


def save_perturbed_tiny_checkpoint(path: Path, **meta) -> Path:
    """``perturbed_tiny_generator`` saved as an inference checkpoint at ``path`` (``meta``: e.g. step, weights)."""
    from unimat_dist.inference import inference_payload, save_inference_checkpoint

    g = perturbed_tiny_generator()
    d = g.diffusion
    save_inference_checkpoint(inference_payload(d.denoiser, d.config(), g.spec, g.normalizer, g.scaler, **meta),
                              str(path))
    return path


def make_job(g, n, comp=None, seed=0, sampler="ddim", steps=4, eta=0.0, noise_scale=1.0, restart=None, **kw):
    """A prepared ``GenerationJob`` of ``n`` crystals (``kw``: the ``SampleRequest`` fields)."""
    from unimat_dist.generation import GenerationJob, prepare_job
    from unimat_dist.inference import SampleRequest

    job = GenerationJob(n, SampleRequest(comp, **kw), sampler, steps, eta, seed, noise_scale=noise_scale,
                        restart=restart)
    return prepare_job(g, job)


# ------------------------------------------------------------------ running loops (thread or process)
def mixed_jobs(g) -> list:
    """Six jobs of mixed samplers, steps, eta, noise scales, restarts, conditioning and guidance."""
    return [
        make_job(g, 2, "LiFePO4", seed=1, steps=6),
        make_job(g, 1, None, seed=2, sampler="ddpm", steps=9, noise_scale=0.5),  # lower temperature
        make_job(g, 3, "SrTiO3", seed=3, steps=3, eta=0.7, restart=(10, 3)),  # stochastic DDIM, a restart pass
        make_job(g, 1, "Li2O", seed=4, steps=12, exact_counts=False),  # element types only
        make_job(g, 2, None, seed=5, steps=5, properties={"band_gap": 1.5}, guidance=2.0),  # guided
        make_job(g, 1, "FeO", seed=6, sampler="ddpm", steps=4, properties={"band_gap": 0.2}, guidance=1.0),
    ]


def collect(engine, jobs, delays=None):
    """Submit ``jobs`` (job k after ``delays[k]`` seconds) and wait for all: [(batch, stats, error)]."""
    results: list = [None] * len(jobs)
    done = [threading.Event() for _ in jobs]

    def callback(k):
        def cb(batch, stats, error):
            results[k] = (batch, stats, error)
            done[k].set()
        return cb

    timers = []
    for k, job in enumerate(jobs):
        delay = (delays or [0.0] * len(jobs))[k]
        if delay:
            timers.append(threading.Timer(delay, engine.submit, (job, callback(k))))
            timers[-1].start()
        else:
            engine.submit(job, callback(k))
    for ev in done:
        assert ev.wait(120)
    return results


def assert_same_crystals(g, batch, alone):
    """The decoded crystals of ``batch`` equal ``alone`` (species exactly, coordinates to 1e-4)."""
    got = g.to_structures(batch)
    assert len(got) == len(alone)
    for a, b in zip(got, alone):
        assert (a is None) == (b is None)
        if a is None:
            continue
        assert [str(s) for s in a.species] == [str(s) for s in b.species]
        np.testing.assert_allclose(a.frac_coords, b.frac_coords, atol=1e-4)
        np.testing.assert_allclose(a.lattice.matrix, b.lattice.matrix, atol=1e-3)


def run_next_to_a_cancelled_job(engine, g, delay: float):
    """A 10-step job next to a 50-step DDPM job whose awaiting task is cancelled after ``delay`` seconds
    (as when an HTTP client disconnects): returns the 10-step job's (batch, stats) and its crystals alone."""
    from unimat_dist.generation import run_jobs

    other = make_job(g, 1, "SrTiO3", seed=2, steps=10)
    alone = run_jobs(g, [make_job(g, 1, "SrTiO3", seed=2, steps=10)])[0]

    async def main():
        long_task = asyncio.create_task(engine.generate(make_job(g, 1, "LiFePO4", seed=1, sampler="ddpm", steps=50)))
        other_task = asyncio.create_task(engine.generate(other))
        await asyncio.sleep(delay)
        long_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await long_task
        return await other_task

    batch, stats = asyncio.run(main())
    return batch, stats, alone
