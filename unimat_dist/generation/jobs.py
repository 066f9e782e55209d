"""Generation jobs and how a batch of them is run: grouped by (sampler, steps, eta), packed into denoising
loops, one random stream per job.

A *job* is one request: ``num_samples`` crystals under one ``SampleRequest`` (composition, exact counts,
properties, guidance) with its own seed. The offline batch job (a shard's requests) calls
``run_jobs``; the online service runs its jobs in ``continuous.py``'s running loop instead:

* **grouping**: jobs with different compositions, exact-count flags, properties and guidance weights
  share one loop (the conditioning is per row); jobs with a different sampler, step count or DDIM eta
  need a different timestep sequence and go to another loop. Groups run in order of first arrival.
* **packing**: within a group, jobs are packed in arrival order into loops of at most ``max_rows``
  rows (the device's memory bound). A job is never split across loops.
* **seeds**: each job draws its initial noise and every ancestral draw from its own generator
  (``RowGenerators``), so a job's samples depend on its seed, size, sampler and steps only, not on
  what it was batched with (up to float rounding of batched kernels).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from unimat_dist.diffusion.noise import RowGenerators
from unimat_dist.diffusion.samplers import DEFAULT_DDIM_STEPS, SAMPLERS, check_restart, default_steps
from unimat_dist.model import Condition
from unimat_dist.inference import SampleRequest, StructureGenerator

SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed accepts 64-bit seeds; JSON clients handle 63 bits


@dataclass
class GenerationJob:
    """``num_samples`` crystals under one request. ``condition``/``guidance`` are filled by ``prepare_job``."""

    num_samples: int
    request: SampleRequest = field(default_factory=SampleRequest)
    sampler: str = "ddim"
    steps: int = DEFAULT_DDIM_STEPS  # resolved (see ``resolve_steps``), so that None and the default group together
    eta: float = 0.0
    seed: int = 0
    # (1, L, H, W) condition shared by every sample, expanded per row at run time; or one row per sample when
    # the model draws compositions from its prior (unconditional and element-type requests)
    condition: Condition | None = None
    guidance: torch.Tensor | None = None  # (1,)
    noise_scale: float = 1.0  # multiplies the ancestral noise (``diffusion.samplers``: sampling temperature)
    restart: tuple[int, int] | None = None  # (t, steps): a second, deterministic pass from t (``reverse_plan``)
    # compositions drawn from the prior without repeats (``StructureGenerator.condition``); None: the checkpoint's
    distinct: bool | None = None

    @property
    def loop_key(self) -> tuple:
        return (self.sampler, int(self.steps), float(self.eta), float(self.noise_scale), self.restart)


@dataclass
class LoopStats:
    """What one denoising loop did (for metrics and logs)."""

    jobs: int
    rows: int
    sampler: str
    steps: int
    seconds: float


def resolve_steps(g: StructureGenerator, sampler: str, steps: int | None) -> int:
    """The step count a sampler runs with: the request's, or ``default_steps`` (T for DDPM, min(100, T) for DDIM)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {list(SAMPLERS)}, got {sampler!r}")
    T = int(g.diffusion.timesteps)
    if steps is None:
        return default_steps(sampler, T)
    steps = int(steps)
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be between 1 and the model's T={T}, got {steps}")
    return steps


def prepare_job(g: StructureGenerator, job: GenerationJob) -> GenerationJob:
    """Check a job against the model and attach its condition; ``ValueError`` names the problem
    (unknown element, element outside the model's system, too many atoms, unknown property, ...)."""
    if job.num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {job.num_samples}")
    if not 0 <= int(job.seed) <= SEED_MAX:
        raise ValueError(f"seed must be between 0 and 2**63-1, got {job.seed}")
    job.steps = resolve_steps(g, job.sampler, job.steps)
    if not 0.0 <= float(job.eta) <= 1.0:
        raise ValueError(f"eta must be between 0 and 1, got {job.eta}")
    if not 0.0 <= float(job.noise_scale) <= 1.0:
        raise ValueError(f"noise_scale must be between 0 and 1, got {job.noise_scale}")
    job.restart = check_restart(job.restart, int(g.diffusion.timesteps))
    rows = job.num_samples if g.draws_composition(job.request) else 1
    try:
        job.condition, job.guidance = g.condition([job.request] * rows, seed=job.seed, distinct=job.distinct)
    except ValueError as exc:
        raise ValueError(str(exc).split(": ", 1)[-1] if str(exc).startswith("request ") else str(exc)) from None
    job.guidance = job.guidance[:1]
    return job


def job_condition(job: GenerationJob) -> Condition:
    """The (num_samples, ...) condition of a prepared job, one row per sample."""
    if len(job.condition) == job.num_samples:
        return job.condition
    return job.condition[torch.zeros(job.num_samples, dtype=torch.long)]


def plan_loops(jobs: Sequence[GenerationJob], max_rows: int) -> list[list[int]]:
    """Indices of the jobs of each denoising loop: grouped by ``loop_key`` (groups in order of first
    arrival), packed greedily in arrival order up to ``max_rows`` rows; a job larger than ``max_rows``
    gets a loop of its own."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    groups: dict[tuple, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(job.loop_key, []).append(i)
    loops: list[list[int]] = []
    for members in groups.values():
        current, rows = [], 0
        for i in members:
            n = jobs[i].num_samples
            if current and rows + n > max_rows:
                loops.append(current)
                current, rows = [], 0
            current.append(i)
            rows += n
        if current:
            loops.append(current)
    return loops


def run_jobs(
    g: StructureGenerator,
    jobs: Sequence[GenerationJob],
    max_rows: int = 256,
    on_loop: Callable[[LoopStats], None] | None = None,
) -> list[list]:
    """Structures (pymatgen, ``None`` where nothing decodes) of every job, in job order.

    Jobs must have been through ``prepare_job``. ``on_loop`` is called after every denoising loop.
    """
    for i, job in enumerate(jobs):
        if job.condition is None:
            raise ValueError(f"job {i} was not prepared (prepare_job attaches its condition)")
    out: list[list] = [[] for _ in jobs]
    for members in plan_loops(jobs, max_rows):
        first = jobs[members[0]]
        counts = [jobs[i].num_samples for i in members]
        cond = Condition.cat([job_condition(jobs[i]) for i in members])
        w = torch.cat([jobs[i].guidance.expand(jobs[i].num_samples) for i in members])
        noise = RowGenerators.seeded([jobs[i].seed for i in members], counts, g.device)
        t0 = time.perf_counter()
        batch = g.sample_condition(cond, w, sampler=first.sampler, steps=first.steps, eta=first.eta,
                                 noise_scale=first.noise_scale, restart=first.restart, generator=noise)
        structures = g.to_structures(batch)
        if on_loop is not None:
            on_loop(LoopStats(len(members), sum(counts), first.sampler, first.steps, time.perf_counter() - t0))
        start = 0
        for i, n in zip(members, counts):
            out[i] = structures[start:start + n]
            start += n
    return out
