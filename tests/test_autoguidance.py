"""Autoguidance (diffusion/autoguidance.py): the combination rule, the guide network travelling inside an
inference checkpoint (written by `unimat model sampling --autoguide-with`, never modifying its input),
the load-time override, and hostile entries refused. The networks are tiny U-Nets with random weights:
what is tested is the machinery; what it does to crystals is measured on the released Carbon-24 model
(test_released_checkpoints.py, docs/learning_core.md)."""
from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch

from unimat_dist.cli import main
from unimat_dist.diffusion.autoguidance import AutoGuidedDenoiser, check_weight, main_network
from unimat_dist.generation.model_source import model_info
from unimat_dist.inference import SampleRequest, load_generator, load_inference_checkpoint, save_inference_checkpoint

from generation_fixtures import perturbed_tiny_generator, save_perturbed_tiny_checkpoint  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(main checkpoint at step 20, guide: the same model at step 5 with other weights)."""
    root = tmp_path_factory.mktemp("ag")
    main_ckpt = save_perturbed_tiny_checkpoint(root / "main.pt", step=20)
    guide = load_inference_checkpoint(str(main_ckpt))
    torch.manual_seed(1)
    guide["state_dict"] = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v
                           for k, v in guide["state_dict"].items()}
    guide["step"] = 5
    guide.pop("path")
    save_inference_checkpoint(guide, str(root / "guide.pt"))
    return main_ckpt, root / "guide.pt"


def test_combination_rule_and_weight_checks():
    g = perturbed_tiny_generator()
    main_net = g.diffusion.denoiser
    guide = perturbed_tiny_generator().diffusion.denoiser
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cond, _ = g.condition([SampleRequest("LiFePO4")] * 3)
    L, H, W = cond.composition.shape[1:]
    torch.manual_seed(0)
    x, y = torch.randn(3, L, H, W, 3), torch.randn(3, main_net.lattice_dim)
    t = torch.tensor([3, 20, 40])
    with torch.no_grad():
        mx, my = main_net(x, y, t, cond)
        gx, gy = guide(x, y, t, cond)
        ax, ay = AutoGuidedDenoiser(main_net, guide, 2.0)(x, y, t, cond)
        zx, zy = AutoGuidedDenoiser(main_net, guide, 0.0)(x, y, t, cond)
    assert torch.allclose(ax, mx + 2.0 * (mx - gx), atol=1e-6) and torch.allclose(ay, my + 2.0 * (my - gy), atol=1e-6)
    assert torch.equal(zx, mx) and torch.equal(zy, my)
    assert not torch.allclose(ax, mx)
    # a limited interval: rows at t <= max_t are guided, the others are the main network alone
    with torch.no_grad():
        ix, iy = AutoGuidedDenoiser(main_net, guide, 2.0, max_t=20)(x, y, t, cond)
        nx, _ = AutoGuidedDenoiser(main_net, guide, 2.0, max_t=1)(x, y, t, cond)
    assert torch.allclose(ix[:2], ax[:2], atol=1e-5) and torch.allclose(iy[:2], ay[:2], atol=1e-5)
    assert torch.equal(ix[2], mx[2]) and torch.equal(iy[2], my[2]) and torch.equal(nx, mx)
    for bad_t in (-1, 2.5, True):
        with pytest.raises(ValueError, match="max_t"):
            AutoGuidedDenoiser(main_net, guide, 1.0, max_t=bad_t)
    wrapped = AutoGuidedDenoiser(main_net, guide, 1.0)
    assert main_network(wrapped) is main_net and main_network(main_net) is main_net
    assert wrapped.lattice_dim == main_net.lattice_dim and wrapped.networks() == (main_net, guide)
    for bad in (-0.1, 10.5, math.nan, math.inf, True, "2"):
        with pytest.raises(ValueError, match="autoguidance weight"):
            check_weight(bad)


def test_guide_travels_in_the_checkpoint_and_can_be_switched_off(pair, tmp_path):
    main_ckpt, guide_ckpt = pair
    before = hashlib.sha256(main_ckpt.read_bytes()).hexdigest()
    out = tmp_path / "ag.pt"
    assert main(["model", "sampling", str(main_ckpt), "--autoguide-with", str(guide_ckpt), "--autoguidance", "2",
                 "--sampler", "ddpm", "--steps", "8", "--noise-scale", "0.5", "--out", str(out)]) == 0
    assert hashlib.sha256(main_ckpt.read_bytes()).hexdigest() == before  # the input is never modified
    assert (tmp_path / "ag.pt.sha256").exists()

    g = load_generator(str(out), device="cpu")
    assert isinstance(g.diffusion.denoiser, AutoGuidedDenoiser)
    assert g.meta["autoguidance"] == {"weight": 2.0, "guide_step": 5, "guide_weights": "ema", "max_t": None}
    info = model_info(g)
    assert info["autoguidance"]["weight"] == 2.0
    assert info["parameters"] == sum(p.numel() for p in load_generator(str(main_ckpt), "cpu").diffusion.denoiser.parameters())

    plain = load_generator(str(main_ckpt), device="cpu")
    off = load_generator(str(out), device="cpu", autoguidance=0)
    assert not isinstance(off.diffusion.denoiser, AutoGuidedDenoiser) and off.meta["autoguidance"] is None
    kw = dict(sampler="ddpm", steps=8, noise_scale=0.5, seed=3)
    a = [s.frac_coords for s in plain.sample(2, "LiFePO4", **kw)]
    b = [s.frac_coords for s in off.sample(2, "LiFePO4", **kw)]
    c = [s.frac_coords for s in g.sample(2, "LiFePO4", **kw)]
    assert all((u == v).all() for u, v in zip(a, b))  # weight 0: exactly the main network
    assert not all(u.shape == v.shape and (abs(u - v) < 1e-6).all() for u, v in zip(a, c))
    # the guided samples are the sampler run on main + w (main - guide), not something else
    manual = load_generator(str(main_ckpt), device="cpu")
    manual.diffusion.denoiser = AutoGuidedDenoiser(manual.diffusion.denoiser,
                                                   load_generator(str(guide_ckpt), "cpu").diffusion.denoiser, 2.0)
    d = [s.frac_coords for s in manual.sample(2, "LiFePO4", **kw)]
    assert all((u == v).all() for u, v in zip(c, d))
    # the composition prior survives dropping the weights (the Serve app's sampling process)
    g.drop_weights()
    assert all(p.device.type == "meta" for p in g.diffusion.denoiser.parameters())

    # `unimat sample` uses the checkpoint's weight, and --autoguidance overrides it
    s_out = tmp_path / "s"
    assert main(["sample", "--checkpoint", str(out), "--num", "1", "--composition", "Fe2O3", "--out", str(s_out),
                 "--device", "cpu", "--no-gallery"]) == 0
    assert json.loads((s_out / "summary.json").read_text())["request"]["autoguidance"]["weight"] == 2.0
    s_off = tmp_path / "s_off"
    assert main(["sample", "--checkpoint", str(out), "--num", "1", "--composition", "Fe2O3", "--out", str(s_off),
                 "--device", "cpu", "--no-gallery", "--autoguidance", "0"]) == 0
    assert json.loads((s_off / "summary.json").read_text())["request"]["autoguidance"] is None

    # reweighting keeps the guide; weight 0 writes a file without it
    re_out, none_out = tmp_path / "ag1.pt", tmp_path / "none.pt"
    assert main(["model", "sampling", str(out), "--autoguidance", "1", "--autoguidance-max-t", "30",
                 "--out", str(re_out)]) == 0
    re = load_generator(str(re_out), "cpu")
    assert re.meta["autoguidance"]["weight"] == 1.0 and re.diffusion.denoiser.max_t == 30
    every = tmp_path / "every.pt"
    assert main(["model", "sampling", str(re_out), "--autoguidance-max-t", "-1", "--out", str(every)]) == 0
    assert load_generator(str(every), "cpu").meta["autoguidance"] == {
        "weight": 1.0, "guide_step": 5, "guide_weights": "ema", "max_t": None}
    assert main(["model", "sampling", str(out), "--autoguidance", "0", "--out", str(none_out)]) == 0
    assert "autoguidance" not in torch.load(none_out, weights_only=True)
    assert load_generator(str(none_out), "cpu").sampling_defaults == {"sampler": "ddpm", "steps": 8, "noise_scale": 0.5}
    with pytest.raises(ValueError, match="carries no guide network"):
        load_generator(str(main_ckpt), "cpu", autoguidance=1.0)


def test_guides_that_do_not_fit_are_refused(pair, tmp_path):
    main_ckpt, guide_ckpt = pair
    out = tmp_path / "x.pt"
    with pytest.raises(SystemExit, match="trained less"):  # a guide must be an earlier network
        main(["model", "sampling", str(guide_ckpt), "--autoguide-with", str(main_ckpt), "--autoguidance", "2",
              "--out", str(out)])
    other = load_inference_checkpoint(str(guide_ckpt))
    other["spec"] = dict(other["spec"], max_atoms_per_element=3)
    other.pop("path")
    save_inference_checkpoint(other, str(tmp_path / "other.pt"))
    with pytest.raises(SystemExit, match="not the same model"):
        main(["model", "sampling", str(main_ckpt), "--autoguide-with", str(tmp_path / "other.pt"),
              "--autoguidance", "2", "--out", str(out)])
    with pytest.raises(SystemExit, match="needs a guide network"):
        main(["model", "sampling", str(main_ckpt), "--autoguidance", "2", "--out", str(out)])
    with pytest.raises(SystemExit, match="needs --autoguidance"):
        main(["model", "sampling", str(main_ckpt), "--autoguide-with", str(guide_ckpt), "--out", str(out)])
    assert main(["model", "sampling", str(main_ckpt), "--autoguide-with", str(guide_ckpt), "--autoguidance", "50",
                 "--out", str(out)]) == 2  # "--autoguidance must be a number in [0, 10]"
    assert not out.exists()


def test_hostile_autoguidance_entries_are_refused(pair, tmp_path):
    main_ckpt, guide_ckpt = pair
    payload = load_inference_checkpoint(str(main_ckpt))
    sd = load_inference_checkpoint(str(guide_ckpt))["state_dict"]
    first = next(iter(sd))
    cases = (
        ({"weight": 2.0, "state_dict": sd, "step": 5, "weights": "ema"}, None),  # the well-formed one loads
        ({"weight": float("nan"), "state_dict": sd}, "weight"),
        ({"weight": 11.0, "state_dict": sd}, "weight"),
        ({"weight": 2.0}, "state_dict"),
        ({"weight": 2.0, "state_dict": {first: [1.0, 2.0]}}, "tensors"),
        ({"weight": 2.0, "state_dict": sd, "code": "import os"}, "keys"),
        ({"weight": 2.0, "state_dict": sd, "step": -1}, "step"),
        ({"weight": 2.0, "state_dict": sd, "max_t": "all"}, "max_t"),
        ({"weight": 2.0, "state_dict": dict(sd, **{first: torch.zeros(2, 2)})}, "does not fit"),
        ({"weight": 2.0, "state_dict": {k: v for k, v in sd.items() if k != first}}, "does not fit"),
        ("guide.pt", "mapping"),
    )
    for entry, match in cases:
        p = dict(payload, autoguidance=entry)
        p.pop("path")
        path = tmp_path / "bad.pt"
        save_inference_checkpoint(p, str(path))
        if match is None:
            assert load_generator(str(path), "cpu").meta["autoguidance"]["weight"] == 2.0
            continue
        with pytest.raises(ValueError, match=match):
            load_generator(str(path), "cpu")
