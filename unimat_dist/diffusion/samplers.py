"""Batched, vectorised reverse processes: ancestral DDPM and DDIM, with guidance and composition constraints.

Both samplers run on a descending sequence of timesteps (``sampling_timesteps``). At each step the
network's noise prediction (classifier-free guided per sample) gives an estimate of x_0, which is then
*constrained*:

* positions are clipped to the model range [-1, 1] and the lattice to +-``lattice_clip`` std;
* slots that cannot hold an atom are set to the null value -1: cells outside the spec's chemical system,
  cells of elements not in the requested composition, and, with exact counts, every slot outside the
  count mask (so the composition is fixed exactly);
* with exact counts, the count-mask slots are clipped into the atom range [0, 1].

The noise estimate is recomputed from the constrained x_0, and the step is taken:

* DDPM (ancestral, Ho et al. 2020): x_{s} ~ N(posterior mean(x_0, x_t), posterior variance), with the
  posterior of the (possibly respaced, Nichol & Dhariwal 2021) schedule; ``steps = T`` is the original.
* DDIM (Song et al. 2021): x_s = sqrt(abar_s) x_0 + sqrt(1 - abar_s - sigma^2) eps + sigma z with
  sigma = eta * sqrt((1 - abar_s)/(1 - abar_t)) * sqrt(1 - abar_t/abar_s); eta = 0 is deterministic.

``noise_scale`` (λ) multiplies the ancestral noise sigma z of both samplers and leaves the step's mean
alone: sampling at a lower temperature (as RFdiffusion's and Chroma's noise scales). λ = 1 is the sampler
as published; λ < 1 trades diversity for precise geometry. Measured on the released Carbon-24 model (200
DDPM-100 samples): λ = 1 gives COV-P 16.5 %, λ = 0.4 53.5 %, 0.2 69.5 %, and λ = 0 (no noise at all)
collapses validity to 70 %. ``bench/bench_sampling_quality.py`` measures it per model.

A restart pass (``restart = (t, k)``, Xu et al. 2023) noises the chain's last estimate of x_0 forward to
t and takes it back in k deterministic DDIM steps; ``reverse_plan`` lists every network evaluation of a
reverse process, restart included, and ``sample`` and the service's running loop both walk that list.

The last step returns the constrained x_0 itself. The loop runs in the diffusion's position space
(``GaussianDiffusion.space``: model space, or the circle embedding of fractional coordinates, where the
constraints are the same in that space's terms) and the output is converted back to model space.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from unimat_dist.model.conditioning import Condition

from .gaussian import GaussianDiffusion
from .guidance import guided_eps, guided_rows, paired_condition
from .noise import NoiseSource, randn
from .schedules import sampling_timesteps

SAMPLERS = ("ddpm", "ddim")
DEFAULT_DDIM_STEPS = 100  # DDIM's steps when none are given (capped by T); DDPM runs all T


def default_steps(sampler: str, timesteps: int) -> int:
    """The steps a sampler runs when none are given: T for DDPM, min(``DEFAULT_DDIM_STEPS``, T) for DDIM."""
    return int(timesteps) if sampler == "ddpm" else min(DEFAULT_DDIM_STEPS, int(timesteps))

LATTICE_CLIP = 5.0  # x_0 estimates of the lattice are clipped to +-this many standard deviations


@dataclass
class SampleOutput:
    positions: torch.Tensor  # (B, L, H, W, 3) model space, float32
    lattice: torch.Tensor  # (B, D) model space, float32
    allowed: torch.Tensor  # (B, L, H, W) bool: slots that were allowed to hold atoms
    exact_atoms: torch.Tensor  # (B, L, H, W) bool: slots fixed to hold atoms (exact counts), else False


def constraint_masks(cond: Condition, allowed_cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(allowed, exact_atoms), both (B, L, H, W) bool: the slots that may hold an atom, and those fixed to
    hold one (exact counts)."""
    allowed = cond.allowed_slots(allowed_cells)
    return allowed, cond.exact[:, None, None, None] & (cond.composition > 0.5) & allowed


def check_restart(restart, timesteps: int | None, where: str = "restart") -> tuple[int, int] | None:
    """None (``restart`` None or empty: no restart), or (t_r, k_r): a timestep in [1, T-1] and a step count
    in [1, t_r + 1] (``timesteps`` None: t_r is not bounded above, for settings read before the model)."""
    if restart is None or (isinstance(restart, (list, tuple)) and len(restart) == 0):
        return None
    if not isinstance(restart, (list, tuple)) or len(restart) != 2 or any(
            isinstance(v, bool) or not isinstance(v, int) for v in restart):
        raise ValueError(f"{where} must be two integers [t, steps], got {repr(restart)[:80]}")
    t_r, k_r = restart
    if t_r < 1 or (timesteps is not None and t_r > timesteps - 1) or not 1 <= k_r <= t_r + 1:
        span = f"in [1, {timesteps - 1}] (the model's T - 1)" if timesteps is not None else ">= 1"
        raise ValueError(f"{where} t must be {span} and steps in [1, t + 1], got {list(restart)}")
    return int(t_r), int(k_r)


def reverse_plan(timesteps: int, sampler: str, steps: int | None, eta: float, noise_scale: float,
                 restart: tuple[int, int] | None = None) -> list[tuple[str, float, float, int, int]]:
    """The network evaluations of one reverse process, in order: (sampler, eta, noise_scale, t, s), s = -1
    on the last one (which returns x_0). Every reverse process (``sample``, the service's running loop,
    batch jobs) walks one of these.

    ``restart = (t_r, k_r)`` (Restart sampling, Xu et al., NeurIPS 2023): the main chain's last estimate of
    x_0 is noised forward to t_r (``"renoise"``: x_{t_r} = sqrt(abar) x_0 + sqrt(1 - abar) z) and taken
    back to 0 in k_r deterministic DDIM steps: a second, short pass at low noise that pulls samples onto
    the geometry the network is sure of.
    """
    steps = steps if steps is not None else default_steps(sampler, timesteps)
    seq = sampling_timesteps(timesteps, steps).tolist()
    plan = [(sampler, eta, noise_scale, t, seq[i + 1] if i + 1 < len(seq) else -1) for i, t in enumerate(seq)]
    restart = check_restart(restart, timesteps)
    if restart is not None:
        t_r, k_r = restart
        polish = sampling_timesteps(t_r + 1, k_r).tolist()
        plan[-1] = ("renoise", 0.0, 1.0, seq[-1], t_r)
        plan += [("ddim", 0.0, 1.0, t, polish[i + 1] if i + 1 < len(polish) else -1) for i, t in enumerate(polish)]
    return plan


def step_coefficients(sampler: str, eta: float, a_t: float, a_s: float) -> tuple[float, float, float, float]:
    """(A, B, C, sigma) of one reverse step from abar_t to abar_s (a_s = 1 for the last step):
    x_s = A x_0 + B eps + C x_t + sigma z. DDIM: A = sqrt(abar_s), B = sqrt(1 - abar_s - sigma^2), C = 0;
    DDPM: the posterior mean's coefficients, B = 0; ``"renoise"`` (a restart, ``reverse_plan``): the
    forward process from the estimate of x_0, A = sqrt(abar_s), sigma = sqrt(1 - abar_s)."""
    if sampler == "renoise":
        return a_s**0.5, 0.0, 0.0, (1 - a_s) ** 0.5
    if sampler == "ddim":
        sigma = eta * ((1 - a_s) / (1 - a_t)) ** 0.5 * (1 - a_t / a_s) ** 0.5
        return a_s**0.5, max(1 - a_s - sigma**2, 0.0) ** 0.5, 0.0, sigma
    beta = 1 - a_t / a_s  # the respaced step's beta
    c0 = a_s**0.5 * beta / (1 - a_t)
    ct = (1 - beta) ** 0.5 * (1 - a_s) / (1 - a_t)
    return c0, 0.0, ct, ((1 - a_s) / (1 - a_t) * beta) ** 0.5


@dataclass
class RowCoefficients:
    """Per-row coefficients of one reverse step: rows may be at different timesteps, with different
    samplers (the service's running loop advances many jobs in one network evaluation)."""

    t: torch.Tensor  # (N,) long timestep of each row
    sq1m: torch.Tensor  # (N,) sqrt(1 - abar_t)
    sqa: torch.Tensor  # (N,) sqrt(abar_t)
    A: torch.Tensor  # (N,) x_s = A x_0 + B eps + C x_t + sigma z (``step_coefficients``)
    B: torch.Tensor
    C: torch.Tensor
    sigma: torch.Tensor
    final: torch.Tensor  # (N,) bool: the row's last step, which returns the constrained x_0 itself
    noisy: bool  # some row adds ancestral noise

    @classmethod
    def build(cls, groups, abar: torch.Tensor, device) -> "RowCoefficients":
        """``groups``: (sampler, eta, noise_scale, t, s, rows) in row order; s = -1 for the last step."""
        vals: dict[str, list[float]] = {k: [] for k in ("t", "sq1m", "sqa", "A", "B", "C", "sigma", "final")}
        for sampler, eta, noise_scale, t, s, n in groups:
            a_t = float(abar[t])
            a_s = float(abar[s]) if s >= 0 else 1.0
            A, B, C, sigma = step_coefficients(sampler, eta, a_t, a_s)
            sigma = sigma * noise_scale if s >= 0 else 0.0
            for k, v in zip(vals, (t, (1 - a_t) ** 0.5, a_t**0.5, A, B, C, sigma, float(s < 0))):
                vals[k].extend([v] * n)
        f = {k: torch.tensor(v, dtype=torch.float32, device=device) for k, v in vals.items() if k != "t"}
        return cls(torch.tensor(vals["t"], dtype=torch.long, device=device), f["sq1m"], f["sqa"], f["A"], f["B"],
                   f["C"], f["sigma"], f["final"].bool(), any(v > 0 for v in vals["sigma"]))


def _col(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def reverse_step(space, x: torch.Tensor, y: torch.Tensor, ex: torch.Tensor, ey: torch.Tensor, c: RowCoefficients,
                 allowed: torch.Tensor, exact: torch.Tensor, zx: torch.Tensor | None = None,
                 zy: torch.Tensor | None = None, lattice_clip: float = LATTICE_CLIP) -> tuple[torch.Tensor, torch.Tensor]:
    """One reverse step of every row from its predicted noise (ex, ey): the x_0 estimate, constrained
    (``space.constrain``: composition, circle projection) and clipped, the noise re-derived from it, then
    ``x_s = A x_0 + B eps + C x_t + sigma z`` (``zx``/``zy``: the rows' ancestral draws, or None when
    ``c.noisy`` is false); rows at their last step get x_0 itself. The fixed-batch sampler (``sample``),
    the service's running loop and the batch jobs all step through here."""
    x0 = space.constrain((x - _col(c.sq1m, x) * ex) / _col(c.sqa, x), allowed, exact)
    y0 = ((y - _col(c.sq1m, y) * ey) / _col(c.sqa, y)).clamp(-lattice_clip, lattice_clip)
    ex = (x - _col(c.sqa, x) * x0) / _col(c.sq1m, x)
    ey = (y - _col(c.sqa, y) * y0) / _col(c.sq1m, y)
    xn = _col(c.A, x) * x0 + _col(c.B, x) * ex + _col(c.C, x) * x
    yn = _col(c.A, y) * y0 + _col(c.B, y) * ey + _col(c.C, y) * y
    if zx is not None:
        xn = xn + _col(c.sigma, x) * zx
        yn = yn + _col(c.sigma, y) * zy
    return torch.where(_col(c.final, x), x0, xn), torch.where(_col(c.final, y), y0, yn)


@torch.no_grad()
def sample(
    diffusion: GaussianDiffusion,
    cond: Condition,
    guidance: torch.Tensor | float = 0.0,
    *,
    sampler: str = "ddim",
    steps: int | None = None,
    eta: float = 0.0,
    noise_scale: float = 1.0,
    restart: tuple[int, int] | None = None,
    generator: NoiseSource = None,
    autocast_dtype: torch.dtype | None = None,
    lattice_clip: float = LATTICE_CLIP,
    progress: bool = False,
) -> SampleOutput:
    """Draw one sample per row of ``cond``; ``guidance`` is a scalar or a (B,) tensor of weights w.

    ``steps`` defaults to T for DDPM and 100 for DDIM; ``noise_scale`` multiplies the ancestral noise;
    ``restart`` (t, steps) adds a second, deterministic pass from t (``reverse_plan``).
    ``autocast_dtype`` (e.g. torch.bfloat16 on GPU)
    runs the network under autocast; the sampler state stays float32. ``generator`` is one
    ``torch.Generator`` for the batch, or ``RowGenerators`` (one per group of rows, so that each group's
    samples depend only on its own seed; see ``noise.py``).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    T = diffusion.timesteps
    plan = reverse_plan(T, sampler, steps, eta, noise_scale, restart)
    device = diffusion.alphas_cumprod.device
    cond = cond.to(device)
    b = len(cond)
    L, H, W = cond.composition.shape[1:]
    d = diffusion.denoiser.lattice_dim
    w = torch.as_tensor(guidance, dtype=torch.float32, device=device).expand(b).contiguous()
    rows = guided_rows(cond, w)
    paired = paired_condition(cond, rows) if rows.numel() else None
    allowed, exact_atoms = constraint_masks(cond, diffusion.allowed_cells)

    space = diffusion.space
    x = randn((b, L, H, W, space.channels), generator, device)
    y = randn((b, d), generator, device)
    abar = diffusion.alphas_cumprod_f64
    amp = (
        torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext()
    )
    iterator = plan
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(plan, desc=f"{sampler}-{len(plan)}", leave=False)
    for step in iterator:
        c = RowCoefficients.build([(*step, b)], abar, device)
        with amp:
            ex, ey = guided_eps(diffusion.denoiser, x, y, c.t, cond, w, rows, paired)
        zx = zy = None
        if c.noisy:
            zx, zy = randn(x.shape, generator, device), randn(y.shape, generator, device)
        x, y = reverse_step(space, x, y, ex, ey, c, allowed, exact_atoms, zx, zy, lattice_clip)
    return SampleOutput(space.from_diffusion(x.float()), y.float(), allowed, exact_atoms)
