"""Diffusion: schedules, forward process, loss weighting, guidance algebra, and the samplers' math checked
against analytic optimal denoisers (a point mass and a Gaussian, whose exact noise predictors are known)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from unimat_dist.diffusion import (
    GaussianDiffusion,
    cfg_combine,
    cosine_betas,
    guided_eps,
    linear_betas,
    make_betas,
    sample,
    sampling_timesteps,
)
from unimat_dist.diffusion.samplers import reverse_plan
from unimat_dist.model import Condition, build_unet, get_preset
from unimat_dist.representation import UniMatSpec, spec_for_elements
from conftest import randomised  # noqa: E402

torch.set_num_threads(1)


# ----------------------------------------------------------------------------------- schedules
def test_linear_schedule_matches_ho_et_al():
    b = linear_betas(1000)
    assert b.shape == (1000,) and b.dtype == torch.float64
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)
    abar = torch.cumprod(1 - b, 0)
    assert abar[-1].item() == pytest.approx(4.04e-5, rel=0.02)  # the DDPM paper's abar_T
    # Rescaled for other T: the end-point noise level stays about the same.
    assert torch.cumprod(1 - linear_betas(100), 0)[-1].item() == pytest.approx(abar[-1].item(), rel=0.5)


def test_cosine_schedule_follows_its_closed_form():
    T = 1000
    abar = torch.cumprod(1 - cosine_betas(T), 0)
    f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 100, 500, 900):
        assert abar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-6)
    assert (abar[1:] < abar[:-1]).all()
    with pytest.raises(ValueError, match="unknown beta schedule"):
        make_betas("quadratic", 10)


def test_sampling_timesteps_cover_both_ends():
    seq = sampling_timesteps(1000, 100)
    assert seq[0].item() == 999 and seq[-1].item() == 0 and len(seq) == 100
    assert (seq[1:] < seq[:-1]).all()
    assert sampling_timesteps(1000, 1000).tolist() == list(range(999, -1, -1))
    with pytest.raises(ValueError):
        sampling_timesteps(10, 11)


# ----------------------------------------------------------------------------------- forward process / loss
def _tiny_diffusion(spec, num_properties=0, **kw):
    torch.manual_seed(0)
    net = build_unet(get_preset("tiny"), spec, num_properties)
    return GaussianDiffusion(net, spec.allowed_cells, **kw)


def test_q_sample_has_the_forward_marginals():
    spec = spec_for_elements(["C"], 4)
    d = _tiny_diffusion(spec, timesteps=100)
    x0 = torch.full((20000, 4, 1, 1, 3), 0.4)
    t = torch.full((20000,), 30)
    xt = d.q_sample(x0, t, torch.randn_like(x0))
    abar = d.alphas_cumprod[30].item()
    assert xt.mean().item() == pytest.approx(math.sqrt(abar) * 0.4, abs=5e-3)
    assert xt.var().item() == pytest.approx(1 - abar, rel=0.02)


def test_position_weights():
    spec = UniMatSpec(3)  # full table: 44 of the 162 cells are always empty
    mask = torch.zeros((3, 3, 9, 18), dtype=torch.bool)
    mask[:, 0, 1, 15] = mask[:, 0, 3, 7] = True  # one O, one Fe
    mask[:, 1, 1, 15] = True  # a second O
    allowed = torch.as_tensor(spec.allowed_cells)
    types = mask.any(1, keepdim=True).float().expand_as(mask)
    cond = Condition(torch.stack([mask[0].float(), types[1], torch.zeros_like(types[2])]),
                     torch.tensor([True, False, False]), torch.zeros(3, 0), torch.zeros(3, 0, dtype=torch.bool))
    for weighting in ("uniform", "allowed", "condition"):
        w = _tiny_diffusion(spec, loss_weighting=weighting).position_weights(mask, cond)
        assert torch.allclose(w.sum((1, 2, 3)), torch.ones(3))
    w = _tiny_diffusion(spec, loss_weighting="uniform").position_weights(mask)
    assert (w == 1 / (3 * 9 * 18)).all()
    w = _tiny_diffusion(spec, loss_weighting="allowed").position_weights(mask)
    assert (w[:, :, ~allowed] == 0).all() and (w[:, :, allowed] == 1 / (3 * 118)).all()
    w = _tiny_diffusion(spec, loss_weighting="condition").position_weights(mask, cond)
    assert torch.equal(w[0] > 0, mask[0]) and (w[0][mask[0]] == 1 / 3).all()  # exact counts: the 3 atoms
    assert torch.equal(w[1] > 0, types[1] > 0) and (w[1][types[1] > 0] == 1 / 6).all()  # 2 cells x 3 slots
    assert torch.equal(w[2] > 0, allowed.expand(3, 9, 18))  # unconditional: like "allowed"
    # Weights never depend on where the atoms truly are, only on what the model is told.
    moved = torch.roll(mask, 1, dims=1)
    for weighting in ("uniform", "allowed", "condition"):
        d = _tiny_diffusion(spec, loss_weighting=weighting)
        assert torch.equal(d.position_weights(mask, cond), d.position_weights(moved, cond))


def test_loss_of_a_fresh_model_is_the_noise_variance():
    """Zero-initialised output layers predict eps = 0, so each MSE term is E[n^2] = 1."""
    spec = UniMatSpec(2)
    d = _tiny_diffusion(spec, lattice_loss_weight=0.5)
    b = 64
    x0 = torch.full((b, 2, 9, 18, 3), -1.0)
    loss, m = d(x0, torch.zeros(b, 6), torch.zeros((b, 2, 9, 18), dtype=torch.bool), Condition.unconditional(b, (2, 9, 18), 0))
    assert m["loss_positions"].item() == pytest.approx(1.0, abs=0.02)
    assert m["loss_lattice"].item() == pytest.approx(1.0, abs=0.1)
    assert loss.item() == pytest.approx(m["loss_positions"].item() + 0.5 * m["loss_lattice"].item(), rel=1e-6)
    loss.backward()
    assert all(p.grad is not None for p in d.denoiser.out_conv.parameters())


# ----------------------------------------------------------------------------------- guidance


def test_cfg_combine_formula():
    c, u = torch.randn(3, 5), torch.randn(3, 5)
    w = torch.tensor([0.0, 1.0, 2.5])
    out = cfg_combine(c, u, w)
    for i in range(3):
        assert torch.allclose(out[i], (1 + w[i]) * c[i] - w[i] * u[i])
    assert torch.equal(out[0], c[0])


def test_guided_eps_mixed_batch():
    spec = spec_for_elements(["Fe", "O"], 3)
    torch.manual_seed(1)
    net = randomised(build_unet(get_preset("tiny"), spec, 2)).eval()
    b = 4
    x, y, t = torch.randn(b, 3, 2, 2, 3), torch.randn(b, 6), torch.tensor([10, 200, 500, 999])
    comp = torch.zeros(b, 3, 2, 2)
    comp[:, 0, 1, 1] = 1.0
    cond = Condition(comp, torch.tensor([True, False, True, False]), torch.randn(b, 2),
                     torch.tensor([[True, False], [True, True], [False, False], [True, True]]))
    w = torch.tensor([0.0, 2.0, 3.0, -0.5])
    with torch.no_grad():
        gx, gy = guided_eps(net, x, y, t, cond, w)
        cx, cy = net(x, y, t, cond)
        ux, uy = net(x, y, t, cond.without_properties())
    # w = 0 is exactly the conditional model; a sample without properties ignores w.
    assert torch.allclose(gx[0], cx[0], atol=1e-5) and torch.allclose(gy[0], cy[0], atol=1e-5)
    assert torch.allclose(gx[2], cx[2], atol=1e-5)
    for i in (1, 3):
        assert torch.allclose(gx[i], (1 + w[i]) * cx[i] - w[i] * ux[i], atol=1e-4)
        assert torch.allclose(gy[i], (1 + w[i]) * cy[i] - w[i] * uy[i], atol=1e-4)
    assert not torch.allclose(cx[1], ux[1], atol=1e-4)  # the properties do change the prediction


def test_sampling_with_zero_guidance_equals_the_conditional_model():
    spec = spec_for_elements(["Fe", "O"], 3)
    torch.manual_seed(2)
    d = GaussianDiffusion(randomised(build_unet(get_preset("tiny"), spec, 1)).eval(), spec.allowed_cells, timesteps=50)
    cond = Condition(torch.zeros(3, 3, 2, 2), torch.zeros(3, dtype=torch.bool), torch.ones(3, 1),
                     torch.ones(3, 1, dtype=torch.bool))
    a = sample(d, cond, 0.0, sampler="ddim", steps=10, generator=torch.Generator().manual_seed(0))
    b = sample(d, cond, torch.zeros(3), sampler="ddim", steps=10, generator=torch.Generator().manual_seed(0))
    c = sample(d, cond, 2.0, sampler="ddim", steps=10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.positions, b.positions) and torch.equal(a.lattice, b.lattice)
    assert not torch.allclose(a.positions, c.positions)


# ----------------------------------------------------------------------------------- samplers vs analytic denoisers
class GaussianOracle(nn.Module):
    """The exact noise predictor for data x0 ~ N(mu, s^2) (independent entries) under the diffusion's schedule:
    E[eps | x_t] = sqrt(1 - abar) (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar). s = 0 is a point mass at mu."""

    def __init__(self, abar, mu_x, s_x, mu_y, s_y):
        super().__init__()
        self.register_buffer("abar", abar.float())
        self.mu_x, self.s_x, self.mu_y, self.s_y = mu_x, s_x, mu_y, s_y
        self.lattice_dim = mu_y.shape[-1]

    def _eps(self, v, t, mu, s):
        a = self.abar[t].reshape(-1, *([1] * (v.dim() - 1)))
        return (1 - a).sqrt() * (v - a.sqrt() * mu) / (a * s**2 + 1 - a)

    def forward(self, x, y, t, cond):
        return self._eps(x, t, self.mu_x, self.s_x), self._eps(y, t, self.mu_y, self.s_y)


@pytest.mark.parametrize("sampler,steps", [("ddim", 50), ("ddpm", 1000), ("ddpm", 100)])
def test_samplers_recover_a_point_mass_exactly(sampler, steps):
    """With the exact denoiser of a single crystal, every sampler must return that crystal."""
    spec = spec_for_elements(["Fe", "O"], 3)
    allowed = torch.as_tensor(spec.allowed_cells)
    h, w = torch.nonzero(allowed)[0].tolist()
    target = torch.full((3, 2, 2, 3), -1.0)
    target[0, h, w] = torch.tensor([0.1, 0.2, 0.3])
    target[1, h, w] = torch.tensor([0.6, 0.7, 0.8])
    y_target = torch.tensor([0.5, -0.2, 0.1, 0.0, 0.3, -1.0])
    base = GaussianDiffusion(nn.Identity(), spec.allowed_cells, timesteps=1000)
    oracle = GaussianOracle(base.alphas_cumprod, target, 0.0, y_target, 0.0)
    d = GaussianDiffusion(oracle, spec.allowed_cells, timesteps=1000)
    out = sample(d, Condition.unconditional(8, (3, 2, 2), 0), sampler=sampler, steps=steps,
                 generator=torch.Generator().manual_seed(0), eta=0.0)
    assert torch.allclose(out.positions, target.expand_as(out.positions), atol=1e-4)
    assert torch.allclose(out.lattice, y_target.expand_as(out.lattice), atol=1e-4)


def chain_moments(abar, steps, sampler, eta, mu, s, noise_scale=1.0, seq=None, m=0.0, v=1.0):
    """Mean and std of the discrete sampler chain's output for data N(mu, s^2) with the exact denoiser,
    by propagating the Gaussian's moments step by step (scalar reference for the vectorised sampler).
    The discrete chains are slightly under-dispersed (finite steps); continuous time would give s.
    ``noise_scale`` multiplies each step's added noise and nothing else. ``seq``, ``m``, ``v``: another
    timestep sequence and the moments of x at its first step (a restart pass)."""
    seq = sampling_timesteps(len(abar), steps).tolist() if seq is None else seq
    for i, t in enumerate(seq):
        a = abar[t].item()
        a_s = abar[seq[i + 1]].item() if i + 1 < len(seq) else 1.0
        k = math.sqrt(a) * s * s / (a * s * s + 1 - a)  # posterior mean: x0 = k x_t + b0
        b0 = mu - k * math.sqrt(a) * mu
        if i + 1 == len(seq):
            return k * m + b0, math.sqrt(k * k * v)
        e1, e0 = (1 - math.sqrt(a) * k) / math.sqrt(1 - a), -math.sqrt(a) * b0 / math.sqrt(1 - a)
        if sampler == "ddim":
            sig = eta * math.sqrt((1 - a_s) / (1 - a) * (1 - a / a_s))
            ce = math.sqrt(1 - a_s - sig * sig)
            A, B = math.sqrt(a_s) * k + ce * e1, math.sqrt(a_s) * b0 + ce * e0
        else:
            beta = 1 - a / a_s
            c0, ct = math.sqrt(a_s) * beta / (1 - a), math.sqrt(1 - beta) * (1 - a_s) / (1 - a)
            sig = math.sqrt((1 - a_s) / (1 - a) * beta)
            A, B = c0 * k + ct, c0 * b0
        m, v = A * m + B, A * A * v + (noise_scale * sig) ** 2
    raise AssertionError("unreachable")


@pytest.mark.parametrize("sampler,steps,eta,lam", [("ddpm", 1000, 0.0, 1.0), ("ddpm", 100, 0.0, 1.0),
                                                  ("ddim", 200, 0.0, 1.0), ("ddim", 200, 1.0, 1.0),
                                                  ("ddpm", 100, 0.0, 0.5), ("ddim", 200, 1.0, 0.3)])
def test_samplers_draw_the_right_gaussian(sampler, steps, eta, lam):
    """With the exact denoiser of N(mu, s^2), samples have the moments of the discrete chain, which for
    DDPM-1000 are within 5% of (mu, s) themselves; a noise scale λ < 1 narrows them as the chain with
    λ-scaled noise predicts (a lower temperature, same mean)."""
    spec = spec_for_elements(["C"], 4)
    mu, s = 0.3, 0.1
    base = GaussianDiffusion(nn.Identity(), spec.allowed_cells, timesteps=1000)
    oracle = GaussianOracle(base.alphas_cumprod, torch.tensor(mu), s, torch.tensor([0.5] * 6), 0.2)
    d = GaussianDiffusion(oracle, spec.allowed_cells, timesteps=1000)
    out = sample(d, Condition.unconditional(4000, (4, 1, 1), 0), sampler=sampler, steps=steps, eta=eta,
                 noise_scale=lam, generator=torch.Generator().manual_seed(0))
    x, y = out.positions.flatten().double(), out.lattice.flatten().double()
    ref_m, ref_s = chain_moments(base.alphas_cumprod_f64, steps, sampler, eta, mu, s, lam)
    assert x.mean().item() == pytest.approx(ref_m, abs=0.002)
    assert x.std().item() == pytest.approx(ref_s, rel=0.015)
    ref_my, ref_sy = chain_moments(base.alphas_cumprod_f64, steps, sampler, eta, 0.5, 0.2, lam)
    assert y.mean().item() == pytest.approx(ref_my, abs=0.01)
    assert y.std().item() == pytest.approx(ref_sy, rel=0.03)
    if lam < 1:  # narrower than the same chain at temperature 1
        assert x.std().item() < 0.9 * chain_moments(base.alphas_cumprod_f64, steps, sampler, eta, mu, s)[1]
    if (sampler, steps) == ("ddpm", 1000):
        assert x.std().item() == pytest.approx(s, rel=0.05) and x.mean().item() == pytest.approx(mu, abs=0.002)


def test_reverse_plan_and_restart():
    """A restart pass: the main chain's last step noises its x_0 forward to t_r instead of returning it,
    then k_r deterministic DDIM steps go back; only the very last evaluation returns x_0."""
    plan = reverse_plan(1000, "ddpm", 100, 0.0, 0.3, None)
    assert len(plan) == 100 and plan[0][3] == 999 and plan[-1][3:] == (0, -1)
    assert all(p[:3] == ("ddpm", 0.0, 0.3) for p in plan)
    r = reverse_plan(1000, "ddim", 100, 1.0, 0.3, (100, 20))
    assert len(r) == 120 and r[:99] == reverse_plan(1000, "ddim", 100, 1.0, 0.3)[:99]
    assert r[99] == ("renoise", 0.0, 1.0, 0, 100)
    assert r[100][:4] == ("ddim", 0.0, 1.0, 100) and r[-1][3:] == (0, -1)
    assert [p[4] for p in r].count(-1) == 1
    for bad in ((0, 1), (1000, 5), (10, 12), (10,), (True, 2), (5.0, 2)):
        with pytest.raises(ValueError, match="restart"):
            reverse_plan(1000, "ddim", 100, 0.0, 1.0, bad)


@pytest.mark.parametrize("sampler,steps,eta,lam", [("ddpm", 100, 0.0, 1.0), ("ddim", 100, 1.0, 0.3)])
def test_restart_with_exact_denoisers(sampler, steps, eta, lam):
    """With the exact denoiser a restart keeps a point mass exactly, and for N(mu, s^2) its output has the
    moments of the main chain's output noised to t_r and taken back by the deterministic DDIM chain."""
    spec = spec_for_elements(["C"], 4)
    base = GaussianDiffusion(nn.Identity(), spec.allowed_cells, timesteps=1000)
    abar = base.alphas_cumprod_f64
    point = GaussianDiffusion(GaussianOracle(base.alphas_cumprod, torch.tensor(0.3), 0.0, torch.tensor([0.5] * 6), 0.0),
                              spec.allowed_cells, timesteps=1000)
    out = sample(point, Condition.unconditional(8, (4, 1, 1), 0), sampler=sampler, steps=steps, eta=eta,
                 noise_scale=lam, restart=(100, 20), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out.positions, torch.full_like(out.positions, 0.3), atol=1e-4)
    mu, s = 0.3, 0.1
    d = GaussianDiffusion(GaussianOracle(base.alphas_cumprod, torch.tensor(mu), s, torch.tensor([0.5] * 6), 0.2),
                          spec.allowed_cells, timesteps=1000)
    out = sample(d, Condition.unconditional(4000, (4, 1, 1), 0), sampler=sampler, steps=steps, eta=eta,
                 noise_scale=lam, restart=(100, 20), generator=torch.Generator().manual_seed(0))
    m1, s1 = chain_moments(abar, steps, sampler, eta, mu, s, lam)
    a = abar[100].item()
    polish = sampling_timesteps(101, 20).tolist()
    ref_m, ref_s = chain_moments(abar, 20, "ddim", 0.0, mu, s, 1.0, seq=polish, m=math.sqrt(a) * m1,
                                 v=a * s1 * s1 + 1 - a)
    x = out.positions.flatten().double()
    assert x.mean().item() == pytest.approx(ref_m, abs=0.002)
    assert x.std().item() == pytest.approx(ref_s, rel=0.015)


def test_exact_counts_fix_the_null_slots():
    """Composition constraints: outside the count mask every slot is null, inside it every slot is an atom."""
    spec = spec_for_elements(["Fe", "O"], 3)
    torch.manual_seed(3)
    d = GaussianDiffusion(randomised(build_unet(get_preset("tiny"), spec, 0)).eval(), spec.allowed_cells, timesteps=100)
    from unimat_dist.representation import count_mask, element_mask

    cm = torch.as_tensor(count_mask("Fe2O3", spec))
    em = torch.as_tensor(element_mask("FeO", spec)).expand(3, 2, 2)
    cond = Condition(torch.stack([cm, em]), torch.tensor([True, False]), torch.zeros(2, 0), torch.zeros(2, 0, dtype=torch.bool))
    out = sample(d, cond, sampler="ddpm", steps=20, generator=torch.Generator().manual_seed(0))
    x = out.positions
    assert (x[0][cm == 0] == -1).all()
    assert ((x[0][cm == 1] >= 0) & (x[0][cm == 1] <= 1)).all()
    assert (x[1][em == 0] == -1).all()  # cells outside the requested element types stay empty
    assert torch.equal(out.exact_atoms[0], cm.bool()) and not out.exact_atoms[1].any()
