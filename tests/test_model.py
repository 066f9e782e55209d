"""The 3D U-Net: shapes and dtypes for every preset and for reduced/odd-sized systems, conditioning paths,
activation checkpointing, bf16 autocast, parameter counts."""
from __future__ import annotations

import pytest
import torch

from unimat_dist.model import PRESETS, Condition, UNetConfig, UniMatUNet, build_unet, get_preset
from unimat_dist.representation import UniMatSpec, spec_for_elements
from conftest import randomised  # noqa: E402

torch.set_num_threads(1)


def _inputs(b, shape, d, p, device=None):
    L, H, W = shape
    g = torch.Generator().manual_seed(0)
    x = torch.rand((b, L, H, W, 3), generator=g) * 2 - 1
    y = torch.randn((b, d), generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    comp = (torch.rand((b, L, H, W), generator=g) > 0.8).float()
    cond = Condition(comp, torch.arange(b) % 2 == 0, torch.randn((b, p), generator=g), torch.rand((b, p), generator=g) > 0.3)
    if device is not None:
        x, y, t, cond = x.to(device), y.to(device), t.to(device), cond.to(device)
    return x, y, t, cond


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_forward_backward_shapes_on_cpu(preset):
    spec = UniMatSpec(3)  # Perov-5 size: L=3 over the full 9 x 18 table
    torch.manual_seed(0)
    net = build_unet(get_preset(preset), spec, num_properties=2)
    x, y, t, cond = _inputs(2, spec.shape[:3], 6, 2)
    ex, ey = net(x, y, t, cond)
    assert ex.shape == x.shape and ey.shape == y.shape
    assert ex.dtype == torch.float32 and ey.dtype == torch.float32
    (ex.square().mean() + ey.square().mean()).backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_on_the_meta_device(preset):
    """Shapes/dtypes of every preset (base/large included) at MP-20 size, without allocating weights."""
    spec = UniMatSpec(20)
    with torch.device("meta"):
        net = build_unet(get_preset(preset), spec, num_properties=1)
        x, y, t, cond = _inputs(4, spec.shape[:3], 6, 1, device="meta")
        ex, ey = net(x, y, t, cond)
    assert ex.shape == (4, 20, 9, 18, 3) and ey.shape == (4, 6)
    assert ex.dtype == torch.float32


def test_parameter_counts_grow_and_large_is_over_300m():
    spec = UniMatSpec(20)
    counts = {}
    for name in ("tiny", "small", "base", "large"):
        with torch.device("meta"):
            counts[name] = build_unet(get_preset(name), spec, 1).num_params()
    assert counts["tiny"] < 2e6 < counts["small"] < counts["base"] < counts["large"]
    assert counts["large"] >= 300e6


@pytest.mark.parametrize(
    "spec,overrides",
    [
        (spec_for_elements(["C"], 24), {}),  # Carbon-24: H = W = 1, L = 24
        (spec_for_elements(["C"], 24), {"downsample_l": True}),  # ... halving L: 24 -> 12
        (spec_for_elements(["C"], 5), {"downsample_l": True, "dim_mults": (1, 2, 2)}),  # odd L: 5 -> 3 -> 2
        (UniMatSpec(3), {"dim_mults": (1, 2, 2, 2), "attn_levels": (1, 3)}),  # 9 x 18 -> 5 x 9 -> 3 x 5 -> 2 x 3
        (UniMatSpec(5, coords="cartesian"), {"conv": "full"}),  # 9-number lattice, full 3x3x3 convolutions
        (spec_for_elements(["Fe", "O"], 1), {}),  # L = 1, 2 x 2 grid
    ],
)
def test_reduced_and_odd_sizes(spec, overrides):
    torch.manual_seed(0)
    net = build_unet(get_preset("tiny", **overrides), spec, num_properties=1)
    x, y, t, cond = _inputs(2, spec.shape[:3], spec.lattice_dim, 1)
    ex, ey = net(x, y, t, cond)
    assert ex.shape == x.shape and ey.shape == (2, spec.lattice_dim)
    assert torch.isfinite(ex).all() and torch.isfinite(ey).all()


def test_wrong_input_shapes_are_clear_errors():
    spec = UniMatSpec(3)
    net = build_unet(get_preset("tiny"), spec, 1)
    x, y, t, cond = _inputs(2, (3, 9, 18), 6, 1)
    with pytest.raises(ValueError, match="positions have shape"):
        net(x[:, :2], y, t, cond)
    with pytest.raises(ValueError, match="lattice has shape"):
        net(x, y[:, :5], t, cond)
    with pytest.raises(ValueError, match="properties"):
        net(x, y, t, Condition.unconditional(2, (3, 9, 18), 3))
    with pytest.raises(ValueError, match="attn_levels"):
        UNetConfig(dim_mults=(1, 2), attn_levels=(2,))
    with pytest.raises(ValueError, match="unknown model preset"):
        get_preset("huge")


def test_conditioning_changes_the_prediction_and_null_properties_ignore_values():
    spec = spec_for_elements(["Fe", "O", "Li"], 3)
    torch.manual_seed(0)
    net = randomised(build_unet(get_preset("tiny"), spec, num_properties=2)).eval()
    x, y, t, cond = _inputs(3, spec.shape[:3], 6, 2)
    with torch.no_grad():
        base = net(x, y, t, cond)[0]
        # Values behind a False mask are never read: the learned null embedding stands in.
        masked = Condition(cond.composition, cond.exact, torch.randn_like(cond.properties) * 10, cond.property_mask)
        nulls = cond.without_properties()
        changed = Condition(nulls.composition, nulls.exact, torch.randn_like(cond.properties), nulls.property_mask)
        assert torch.equal(net(x, y, t, nulls)[0], net(x, y, t, changed)[0])
        assert not torch.allclose(net(x, y, t, masked)[0], base)  # (some values were unmasked)
        # The null embedding differs from the embedding of the value 0.
        zero_vals = Condition(cond.composition, cond.exact, torch.zeros_like(cond.properties),
                              torch.ones_like(cond.property_mask))
        assert not torch.allclose(net(x, y, t, zero_vals)[0], net(x, y, t, nulls)[0])
        # Composition channels matter, and exact counts differ from element types with the same mask.
        no_comp = Condition(torch.zeros_like(cond.composition), cond.exact, cond.properties, cond.property_mask)
        assert not torch.allclose(net(x, y, t, no_comp)[0], base)
        flipped = Condition(cond.composition, ~cond.exact, cond.properties, cond.property_mask)
        assert not torch.allclose(net(x, y, t, flipped)[0], base)


def test_condition_channels_and_allowed_slots():
    spec = spec_for_elements(["Fe", "O"], 3)
    from unimat_dist.representation import count_mask, element_mask

    cm = torch.as_tensor(count_mask("Fe2O3", spec))
    em = torch.as_tensor(element_mask("Fe", spec)).expand(3, 2, 2)
    cond = Condition(torch.stack([cm, em, torch.zeros_like(cm)]), torch.tensor([True, False, False]),
                     torch.zeros(3, 0), torch.zeros(3, 0, dtype=torch.bool))
    ch = cond.channels()
    assert torch.equal(ch[0, 1], cm) and (ch[0, 0] == 0).all()
    assert torch.equal(ch[1, 0], em) and (ch[1, 1] == 0).all()
    allowed = torch.as_tensor(spec.allowed_cells)
    slots = cond.allowed_slots(allowed)
    assert torch.equal(slots[0], cm.bool())
    assert torch.equal(slots[1], em.bool())
    assert torch.equal(slots[2], allowed.expand(3, 2, 2))


def test_activation_checkpointing_gives_the_same_gradients():
    spec = UniMatSpec(2)
    torch.manual_seed(0)
    a = randomised(build_unet(get_preset("tiny"), spec, 1))
    b = UniMatUNet(get_preset("tiny", checkpoint_activations=True), (2, 9, 18), 6, 1)
    b.load_state_dict(a.state_dict())
    x, y, t, cond = _inputs(2, (2, 9, 18), 6, 1)
    for net in (a, b):
        ex, ey = net(x, y, t, cond)
        (ex.square().mean() + ey.square().mean()).backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), n


def test_bf16_autocast_forward_backward():
    """The code path used on GPUs (bf16 autocast), exercised on the CPU."""
    spec = UniMatSpec(2)
    torch.manual_seed(0)
    net = randomised(build_unet(get_preset("tiny"), spec, 1))
    x, y, t, cond = _inputs(2, (2, 9, 18), 6, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ex, ey = net(x, y, t, cond)
    assert ex.dtype == torch.bfloat16
    ref = net(x, y, t, cond)[0]
    assert (ex.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.05
    (ex.float().square().mean() + ey.float().square().mean()).backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_optimizer_groups_partition_the_parameters():
    net = build_unet(get_preset("tiny"), UniMatSpec(2), 2)
    decay, no_decay = net.optim_groups(0.1)
    ids = [id(p) for p in decay["params"]] + [id(p) for p in no_decay["params"]]
    assert sorted(ids) == sorted(id(p) for p in net.parameters()) and len(set(ids)) == len(ids)
    assert all(p.dim() >= 2 for p in decay["params"])
    assert id(net.cell_emb) in {id(p) for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


def test_rebuild_from_init_kwargs_and_flop_count():
    spec = spec_for_elements(["C"], 6)
    net = build_unet(get_preset("tiny", dropout=0.1), spec, 1)
    twin = UniMatUNet.from_kwargs(net.init_kwargs())
    assert twin.init_kwargs() == net.init_kwargs()
    twin.load_state_dict(net.state_dict())
    flops = net.flops_per_sample()
    assert 1e5 < flops < 1e10


def test_bf16_weights_run_without_autocast():
    """DeepSpeed's bf16 mode keeps the weights themselves in bf16; float32 inputs must still work."""
    spec = spec_for_elements(["Fe", "O"], 2)
    net = randomised(build_unet(get_preset("tiny"), spec, 1)).to(torch.bfloat16)
    x, y, t, cond = _inputs(2, spec.shape[:3], 6, 1)
    ex, ey = net(x, y, t, cond)
    assert ex.dtype == torch.bfloat16 and ey.shape == (2, 6)
    (ex.float().square().mean() + ey.float().square().mean()).backward()
    assert net.cell_emb.grad is not None and net.cell_emb.grad.dtype == torch.bfloat16


def test_unimat_model_presets_prints_parameter_counts(capsys):
    from unimat_dist.cli import main

    assert main(["model", "presets", "--dataset", "carbon_24"]) == 0
    out = capsys.readouterr().out
    assert "UniMatSpec(L=24, H=1, W=1" in out
    rows = {line.split()[0]: int(line.split()[1].replace(",", "")) for line in out.splitlines()[2:]}
    assert set(rows) == set(PRESETS) and rows["large"] >= 300_000_000
    with torch.device("meta"):
        assert rows["small"] == build_unet(get_preset("small"), spec_for_elements(["C"], 24), 1).num_params()
