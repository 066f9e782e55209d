"""The atom-token transformer, circle-embedded positions and the composition prior: symmetries that are
exact by construction, the prior's support rules, and the proof that the released recipe learns crystal
geometry on real Perov-5 crystals *with the production augmentations on* (random origin, shuffled
slots), which the U-Net could not exploit (docs/learning_core.md)."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from unimat_dist.diffusion.positions import PositionSpace
from unimat_dist.inference import SampleRequest
from unimat_dist.model import CompositionModel, Condition, TransformerConfig
from unimat_dist.model.transformer import CrystalTransformer, token_buckets
from unimat_dist.representation import UniMatSpec
from unimat_dist.launch import run_training
from unimat_dist.training import compositions_of, load_encoded_split, load_train_config
from unimat_dist.training.setup import resolve_spec

torch.set_num_threads(1)


def _net(spec: UniMatSpec, seed: int = 0, rbf: int = 0, edge_dim: int = 0) -> CrystalTransformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(dim=32, depth=2, heads=4, pair_dim=16, rbf=rbf, edge_dim=edge_dim, composition_dim=16)
    net = CrystalTransformer(cfg, (spec.L, spec.H, spec.W), 6, 0, grid_rows=list(spec.rows), grid_cols=list(spec.cols),
                             allowed_cells=spec.allowed_cells, lattice_mean=[1.5] * 3 + [90.0] * 3,
                             lattice_std=[0.2] * 3 + [10.0] * 3, z_at_cell=spec.z_at_cell)
    with torch.no_grad():  # the output layers start at zero; give them weights so the test sees something
        for p in net.parameters():
            if p.abs().sum() == 0 and p.dim() == 2:
                p.normal_(0, 0.2)
    return net.eval()


def _crystal(spec, rng, counts):
    """A random exact-count condition and atom mask for {cell (h, w): count}."""
    mask = torch.zeros((1, spec.L, spec.H, spec.W), dtype=torch.bool)
    for (h, w), n in counts.items():
        mask[0, :n, h, w] = True
    frac = torch.as_tensor(rng.random((1, spec.L, spec.H, spec.W, 3)), dtype=torch.float32)
    cond = Condition(mask.float(), torch.ones(1, dtype=torch.bool), torch.zeros((1, 0)), torch.zeros((1, 0), dtype=bool))
    return frac, mask, cond


def test_circle_space_round_trip_and_constraints():
    space = PositionSpace("circle")
    rng = np.random.default_rng(0)
    frac = torch.as_tensor(rng.random((2, 3, 2, 2, 3)), dtype=torch.float32)
    mask = torch.as_tensor(rng.random((2, 3, 2, 2)) < 0.5)
    x = torch.where(mask[..., None], frac, torch.full_like(frac, -1.0))
    z = space.to_diffusion(x, mask)
    assert z.shape[-1] == 6 and torch.all(z[~mask] == 0)
    back = space.from_diffusion(z)
    assert torch.all(back[~mask] == -1.0)
    d = (back[mask] - frac[mask] + 0.5) % 1.0 - 0.5  # periodic difference
    assert d.abs().max() < 1e-5
    # constraint: exact atoms go to the unit circle, disallowed slots to the origin, the rest inside radius 1
    noisy = 3 * torch.randn_like(z)
    allowed = torch.ones_like(mask)
    allowed[0, 0] = False
    c = space.constrain(noisy, allowed, mask & allowed).unflatten(-1, (3, 2)).norm(dim=-1)
    assert torch.all(c[~allowed] == 0)
    assert torch.allclose(c[mask & allowed], torch.ones_like(c[mask & allowed]), atol=1e-5)
    assert torch.all(c <= 1 + 1e-5)


@pytest.mark.parametrize("rbf,edge_dim", [(0, 0), (8, 16)])
def test_translation_and_permutation_equivariance(rbf, edge_dim):
    """A change of origin turns every atom's predicted noise with its circle embedding, and permuting the
    slots of a cell permutes the prediction: exactly, not learned."""
    spec = UniMatSpec(3)
    net = _net(spec, rbf=rbf, edge_dim=edge_dim)
    rng = np.random.default_rng(1)
    sr, ti, o = (tuple(spec.cell_of_z[z]) for z in (38, 22, 8))
    frac, mask, cond = _crystal(spec, rng, {sr: 1, ti: 1, o: 3})
    space = PositionSpace("circle")
    y = torch.randn(1, 6)
    t = torch.tensor([300])
    eps, ey = net(space.to_diffusion(frac, mask), y, t, cond)
    shift = torch.as_tensor(rng.random(3), dtype=torch.float32)
    eps2, ey2 = net(space.to_diffusion((frac + shift) % 1.0, mask), y, t, cond)
    # rotate eps (per coordinate, a complex number) by the shift's angle
    e = torch.view_as_complex(eps.unflatten(-1, (3, 2)).contiguous())
    rot = torch.view_as_real(e * torch.polar(torch.ones(3), 2 * math.pi * shift)).flatten(-2)
    assert torch.allclose(rot[mask], eps2[mask], atol=1e-4)
    assert torch.allclose(ey, ey2, atol=1e-4)
    # permute the three O slots
    perm = torch.tensor([2, 0, 1])
    frac_p = frac.clone()
    frac_p[0, :, o[0], o[1]] = frac[0, perm, o[0], o[1]]
    eps3, ey3 = net(space.to_diffusion(frac_p, mask), y, t, cond)
    assert torch.allclose(eps3[0, :, o[0], o[1]], eps[0, perm, o[0], o[1]], atol=1e-4)
    assert torch.allclose(ey, ey3, atol=1e-4)
    assert torch.all(eps[~mask] == 0)  # nothing leaks into slots that hold no atom


def test_token_buckets_cover_every_row_once():
    counts = torch.tensor([6, 24, 8, 6, 10, 6, 8, 24, 12, 0] * 20)
    buckets = token_buckets(counts)
    rows = torch.cat([r for r, _ in buckets])
    assert sorted(rows.tolist()) == list(range(len(counts)))  # each row exactly once
    for r, a in buckets:
        assert int(counts[r].max()) <= a  # padded to at least its largest row
    assert 1 < len(buckets) <= len(counts.unique())
    same = token_buckets(torch.full((7,), 5))  # one size: the plain batch, rows in order
    assert len(same) == 1 and same[0][0].tolist() == list(range(7)) and same[0][1] == 5


def test_crystals_of_different_sizes_batched_as_computed_alone():
    """Rows run in buckets of similar size (a cost saving): each crystal's prediction and the gradients
    are the ones it gets alone in the batch, to float rounding."""
    spec = UniMatSpec(6)
    net = _net(spec, rbf=8, edge_dim=16)
    rng = np.random.default_rng(3)
    c, o, si = (tuple(spec.cell_of_z[z]) for z in (6, 8, 14))
    sizes = [{c: 1}, {c: 6}, {o: 2, si: 1}, {c: 4, o: 6}, {c: 1}, {c: 6, o: 6}, {si: 3}, {c: 2}] * 6
    parts = [_crystal(spec, rng, s) for s in sizes]
    frac, mask = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    cond = Condition.cat([p[2] for p in parts])
    assert len(token_buckets(cond.composition.flatten(1).sum(1))) > 1
    x = PositionSpace("circle").to_diffusion(frac, mask)
    y = torch.randn(len(sizes), 6)
    t = torch.randint(0, 1000, (len(sizes),))
    net.zero_grad()
    eps, ey = net(x, y, t, cond)
    (eps.square().sum() + ey.square().sum()).backward()
    grads = [p.grad.clone() for p in net.parameters() if p.grad is not None]
    net.zero_grad()
    alone = [net(x[i:i + 1], y[i:i + 1], t[i:i + 1], cond[i:i + 1]) for i in range(len(sizes))]
    sum(e.square().sum() + ly.square().sum() for e, ly in alone).backward()
    assert torch.allclose(eps, torch.cat([e for e, _ in alone]), atol=1e-5)
    assert torch.allclose(ey, torch.cat([ly for _, ly in alone]), atol=1e-5)
    for g, p in zip(grads, [p for p in net.parameters() if p.grad is not None]):
        assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-5)


def test_composition_prior_stays_in_the_training_support():
    spec = UniMatSpec(4, elements=("Li", "Fe", "P", "O", "Mn"))
    prior = CompositionModel(spec.z_at_cell, spec.L, dim=16)
    cells = {z: int(np.ravel_multi_index(spec.cell_of_z[z], (spec.H, spec.W))) for z in (3, 26, 15, 8, 25)}
    counts = torch.zeros((3, spec.H * spec.W), dtype=torch.long)
    counts[0, [cells[3], cells[26], cells[15], cells[8]]] = torch.tensor([1, 1, 1, 4])  # LiFePO4
    counts[1, [cells[26], cells[8]]] = torch.tensor([2, 3])  # Fe2O3
    counts[2, [cells[3], cells[8]]] = torch.tensor([2, 1])  # Li2O
    prior.observe(counts)
    assert float(prior(counts).mean().detach()) > 0
    g = torch.Generator().manual_seed(0)
    drawn = prior.sample(400, generator=g)
    assert not drawn[:, cells[25]].any()  # Mn never seen: never drawn
    assert drawn.sum(1).max() <= 7 and drawn.sum(1).min() >= 1 and (drawn > 0).sum(1).max() <= 4
    assert drawn.max() <= spec.L
    required = torch.zeros_like(drawn[:5], dtype=torch.bool)
    required[:, [cells[26], cells[8]]] = True
    fe_o = prior.sample(5, generator=g, required=required)
    assert torch.equal(fe_o > 0, required)


def test_distinct_draws_repeat_no_composition_until_the_support_runs_out():
    """``sample_distinct`` is sampling without replacement: 60 different compositions where the support
    holds hundreds; for Fe-O only (15 count pairs fit 7 atoms with at most L = 4 of each), the 15 first and
    then repeats of them, in the hard rules' support, seeded."""
    spec = UniMatSpec(4, elements=("Li", "Fe", "P", "O"))
    prior = CompositionModel(spec.z_at_cell, spec.L, dim=16)
    cells = {z: int(np.ravel_multi_index(spec.cell_of_z[z], (spec.H, spec.W))) for z in (3, 26, 15, 8)}
    counts = torch.zeros((2, spec.H * spec.W), dtype=torch.long)
    counts[0, [cells[3], cells[26], cells[15], cells[8]]] = torch.tensor([1, 1, 1, 4])  # LiFePO4
    counts[1, [cells[26], cells[8]]] = torch.tensor([2, 3])  # Fe2O3
    prior.observe(counts)
    rows = prior.sample_distinct(60, generator=torch.Generator().manual_seed(0))
    assert len({tuple(r.tolist()) for r in rows}) == 60
    assert rows.sum(1).max() <= 7 and (rows > 0).sum(1).max() <= 4
    assert torch.equal(rows, prior.sample_distinct(60, generator=torch.Generator().manual_seed(0)))
    required = torch.zeros((20, spec.H * spec.W), dtype=torch.bool)
    required[:, [cells[26], cells[8]]] = True
    fe_o = [tuple(r.tolist()) for r in prior.sample_distinct(20, generator=torch.Generator().manual_seed(1),
                                                             required=required)]
    assert len(set(fe_o[:15])) == 15 and set(fe_o[15:]) <= set(fe_o[:15])
    assert all(r[cells[26]] >= 1 and r[cells[8]] >= 1 and sum(r) <= 7 for r in fe_o)


# ----------------------------------------------------------------------------------- proof that it learns
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The released recipe (cluster/jobs/results/perov5_transformer_cpu.yaml) at test size: 48 real Perov-5
    crystals, a 3-layer width-64 transformer, 1000 steps, with random translations and shuffled slots on.
    (Sample-level quality needs ~4,000 steps of the `small` model: test_released_checkpoints checks it on the
    released models.)"""
    tmp = tmp_path_factory.mktemp("transformer")
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "cluster" / "jobs" / "results" / "perov5_transformer_cpu.yaml"
    cfg = load_train_config(config, [
        f"out_dir={tmp}/run", f"data.cache_dir={tmp}/cache", "data.limit_train=48", "data.limit_val=48",
        "augment.shuffle_slots=atoms", "augment.translate=true", "model.preset=tiny", "optim.lr=2e-3",
        "optim.warmup_steps=50", "optim.ema_decay=0.99", "train.steps=1000", "train.global_batch_size=32",
        "train.num_threads=1", "train.log_every=50", "train.val_every=0", "train.ckpt_every=0",
        "train.quality_every=500", "train.quality_samples=16", "train.quality_reference=48", "train.progress=false",
        "train.quality_eta=1.0", "train.quality_noise_scale=0.5",  # checks sample as a release would (η, λ,
        "train.quality_restart=[20,5]",  # and a restart pass)
    ])
    result = run_training(cfg)
    spec = resolve_spec(cfg.data)
    data, _ = load_encoded_split("perov_5", "train", spec, limit=48, cache_dir=f"{tmp}/cache")
    from unimat_dist.inference import load_generator

    return result, data, spec, load_generator(result.inference_checkpoint, device="cpu"), Path(cfg.out_dir)


def test_quality_is_logged_and_plotted_while_training(trained):
    import json

    *_, run_dir = trained
    records = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    quality = [r for r in records if "quality/cov_recall" in r]
    assert [r["step"] for r in quality] == [500, 1000]
    for r in quality:
        for k in ("quality/struct_valid", "quality/comp_valid", "quality/emd_atoms", "quality/emd_density",
                  "quality/min_dist", "quality/cov_precision"):
            assert math.isfinite(r[k]), (k, r)
        assert r["train_seconds"] > 0
    assert (run_dir / "loss.png").stat().st_size > 10_000


def _eps_error(g, data, rows, t):
    """Mean squared error of the predicted position noise on atom slots at timestep ``t`` (predicting zero
    noise, i.e. learning nothing about positions, scores 1)."""
    d = g.diffusion
    pos, mask = torch.as_tensor(data.positions[rows]).float(), torch.as_tensor(data.mask[rows])
    x0 = d.space.to_diffusion(g.normalizer.positions_to_model(pos, mask).float(), mask)
    y0 = g.normalizer.lattice_to_model(torch.as_tensor(data.lattice[rows])).float()
    n = len(rows)
    cond = Condition(mask.float(), torch.ones(n, dtype=torch.bool), torch.zeros((n, 0)), torch.zeros((n, 0), dtype=bool))
    gen = torch.Generator().manual_seed(t)
    tt = torch.full((n,), t)
    nx, ny = torch.randn(x0.shape, generator=gen), torch.randn(y0.shape, generator=gen)
    with torch.no_grad():
        ex, _ = d.denoiser(d.q_sample(x0, tt, nx), d.q_sample(y0, tt, ny), tt, cond)
    return float(((ex - nx) ** 2).mean(-1)[mask].mean())


def test_positions_are_learned_with_production_augmentations(trained):
    """The failure of the U-Net (issue 15): its position predictions were exactly as wrong as the noise. Here,
    with random origins and shuffled slots in every batch, the noise on atom positions is largely identified,
    on the training crystals and on held-out ones alike (the geometry generalises, it is not memorised)."""
    _, data, spec, g, _ = trained
    held, _ = load_encoded_split("perov_5", "test", spec, limit=48)
    for t in (50, 100, 200):  # measured (train / held-out): 0.28/0.45, 0.29/0.41, 0.23/0.34; the released model 0.15-0.19
        train_err, held_err = _eps_error(g, data, np.arange(48), t), _eps_error(g, held, np.arange(48), t)
        assert train_err < 0.45 and held_err < 0.6, (t, train_err, held_err)


def test_unconditional_samples_use_the_prior(trained):
    """Composition first: every unconditional sample is a 5-atom cell of elements seen in training, the seed
    reproduces the draw, and element-type requests get exactly the requested elements."""
    _, data, spec, g, _ = trained
    seen = {e for c in compositions_of(data, spec) for e in c}
    out = g.sample(24, sampler="ddim", steps=20, seed=3)
    assert all(s is not None and len(s) == 5 for s in out), Counter(len(s) for s in out if s is not None)
    assert all({str(e) for e in s.composition.elements} <= seen for s in out)
    again = g.sample(24, sampler="ddim", steps=20, seed=3)
    assert [s.composition for s in out] == [s.composition for s in again]
    elems = sorted(compositions_of(data, spec)[0])
    typed = g.sample(6, composition="".join(elems), exact_counts=False, sampler="ddim", steps=20, seed=0)
    assert all(sorted(str(e) for e in s.composition.elements) == elems for s in typed)
    with pytest.raises(ValueError, match="never appear"):
        unseen = next(e for e in ("Og", "Ts", "Lv", "Mc", "Fl") if e not in seen)
        g.sample(1, composition=unseen, exact_counts=False, steps=5)


def test_distinct_unconditional_samples_repeat_no_composition(trained):
    """With ``distinct`` the 24 unconditional draws of one call are 24 compositions (the 48-crystal prior
    repeats some without it), still 5-atom cells of seen elements, reproducible from the seed."""
    _, data, spec, g, _ = trained
    seen = {e for c in compositions_of(data, spec) for e in c}
    cond, _ = g.condition([SampleRequest()] * 24, seed=3, distinct=True)
    comps = [tuple(c.reshape(-1).tolist()) for c in cond.composition.sum(1)]
    assert len(set(comps)) == 24
    plain, _ = g.condition([SampleRequest()] * 24, seed=3, distinct=False)
    assert len({tuple(c.reshape(-1).tolist()) for c in plain.composition.sum(1)}) < 24
    out = g.sample(24, sampler="ddim", steps=10, seed=3, distinct=True)
    assert len({s.composition for s in out}) == 24
    assert all(len(s) == 5 and {str(e) for e in s.composition.elements} <= seen for s in out)
    assert [s.composition for s in out] == [s.composition for s in g.sample(24, steps=10, seed=3, distinct=True)]


def test_serving_jobs_draw_one_composition_per_sample(trained):
    _, _, _, g, _ = trained
    from unimat_dist.generation.jobs import GenerationJob, prepare_job, run_jobs

    jobs = [prepare_job(g, GenerationJob(8, steps=10, seed=5)), prepare_job(g, GenerationJob(3, steps=10, seed=6))]
    assert len(jobs[0].condition) == 8 and len(jobs[1].condition) == 3
    out = run_jobs(g, jobs)
    assert [len(o) for o in out] == [8, 3]
    alone = run_jobs(g, [prepare_job(g, GenerationJob(8, steps=10, seed=5))])[0]
    assert [s.composition for s in out[0]] == [s.composition for s in alone]


def test_a_process_without_weights_still_draws_compositions(trained):
    """The Serve app's front process drops the denoiser's weights (the loop runs in a child process) but
    must keep the composition prior to prepare unconditional jobs."""
    from unimat_dist.generation.jobs import GenerationJob, prepare_job
    from unimat_dist.inference import load_generator

    *_, run_dir = trained
    g = load_generator(str(run_dir / "checkpoints"), device="cpu")
    g.drop_weights()
    assert g.diffusion.denoiser.position_head.weight.is_meta
    assert not any(p.is_meta for p in g.composition_prior.parameters())
    job = prepare_job(g, GenerationJob(6, steps=5, seed=1))
    assert len(job.condition) == 6 and bool(job.condition.exact.all())
