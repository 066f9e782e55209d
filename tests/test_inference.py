"""Generation API on real checkpoints files: the inference format (local, file://, memory:// via fsspec),
per-sample mixed conditioning, exact-count guarantees, determinism, writers and ``unimat sample``.

The model here is an untrained tiny U-Net (random weights): what is tested is the machinery, which must
honour exact-count requests whatever the weights. That a trained model's samples are good is tested in
test_training_local.py."""
from __future__ import annotations

import json

import pytest
import torch

from unimat_dist.diffusion import GaussianDiffusion
from unimat_dist.model import PropertyScaler
from unimat_dist.representation import Normalizer, spec_for_elements
from unimat_dist.inference import (
    SampleRequest,
    inference_payload,
    load_generator,
    load_inference_checkpoint,
    save_inference_checkpoint,
)

from generation_fixtures import perturbed_tiny_unet  # noqa: E402

torch.set_num_threads(1)
SPEC = spec_for_elements(["Li", "Fe", "O", "P"], 4)


def _payload():
    net = perturbed_tiny_unet(SPEC, num_properties=2)
    d = GaussianDiffusion(net, SPEC.allowed_cells, timesteps=100, schedule="cosine")
    scaler = PropertyScaler(("formation_energy_per_atom", "band_gap"), (-1.5, 1.0), (0.8, 1.2))
    return inference_payload(net, d.config(), SPEC, Normalizer.default(SPEC), scaler, train_config={"seed": 0}, step=7)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "run" / "inference.pt"
    save_inference_checkpoint(_payload(), str(path))
    return path


def _formula_counts(s):
    return {str(e): int(n) for e, n in s.composition.get_el_amt_dict().items()}


def test_checkpoint_is_a_plain_weights_only_dict(ckpt):
    raw = torch.load(ckpt, weights_only=True)
    assert raw["format"] == "unimat-dist/inference" and raw["format_version"] == 1
    assert raw["spec"]["elements"] == ["Li", "O", "P", "Fe"] and raw["step"] == 7
    assert raw["model"]["shape"] == [4, SPEC.H, SPEC.W]
    assert raw["properties"]["names"] == ["formation_energy_per_atom", "band_gap"]
    assert raw["diffusion"]["timesteps"] == 100 and raw["diffusion"]["schedule"] == "cosine"
    assert all(v.dtype == torch.float32 for v in raw["state_dict"].values() if v.is_floating_point())


def test_loading_from_file_directory_and_fsspec_uris(ckpt):
    import fsspec

    a = load_generator(str(ckpt), device="cpu")
    b = load_generator(str(ckpt.parent), device="cpu")  # directory holding inference.pt
    c = load_generator(f"file://{ckpt}", device="cpu")
    with fsspec.open("memory://bucket/run/inference.pt", "wb") as fh:
        fh.write(ckpt.read_bytes())
    d = load_generator("memory://bucket/run/inference.pt", device="cpu")
    ref = a.sample(3, composition="LiFePO4", steps=5, seed=1)
    for g in (b, c, d):
        assert g.property_names == ("formation_energy_per_atom", "band_gap")
        out = g.sample(3, composition="LiFePO4", steps=5, seed=1)
        assert [s.frac_coords.tolist() for s in out] == [s.frac_coords.tolist() for s in ref]


def test_bad_checkpoints_are_clear_errors(tmp_path, ckpt):
    with pytest.raises(FileNotFoundError):
        load_generator(str(tmp_path / "missing.pt"))
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a unimat-dist inference checkpoint"):
        load_inference_checkpoint(str(tmp_path / "other.pt"))
    newer = torch.load(ckpt, weights_only=True)
    newer["format_version"] = 99
    torch.save(newer, tmp_path / "newer.pt")
    with pytest.raises(ValueError, match="format version 99"):
        load_inference_checkpoint(str(tmp_path / "newer.pt"))


def test_exact_counts_are_honoured_exactly_even_untrained(ckpt):
    g = load_generator(str(ckpt), device="cpu")
    cases = [("LiFePO4", {"Li": 1, "Fe": 1, "P": 1, "O": 4}), ("Fe2O3", {"Fe": 2, "O": 3}),
             ({"Li": 3, "P": 1, "O": 4}, {"Li": 3, "P": 1, "O": 4})]
    for comp, want in cases:
        out = g.sample(6, composition=comp, exact_counts=True, sampler="ddim", steps=8, seed=0)
        assert all(s is not None and _formula_counts(s) == want for s in out)
        assert all(s.lattice.a >= 1.0 and 20 <= s.lattice.alpha <= 160 for s in out)


def test_mixed_requests_in_one_batch(ckpt):
    g = load_generator(str(ckpt), device="cpu")
    reqs = [
        SampleRequest(),  # unconditional
        SampleRequest("Fe2O3", exact_counts=True),
        SampleRequest({"Fe": 1, "O": 1}, exact_counts=False),  # element types only
        SampleRequest("LiFePO4", True, {"formation_energy_per_atom": -2.0}, guidance=2.0),
        SampleRequest(None, True, {"band_gap": 1.5, "formation_energy_per_atom": float("nan")}, guidance=1.0),
    ]
    cond, w = g.condition(reqs)
    assert cond.exact.tolist() == [False, True, False, True, False]
    assert w.tolist() == [0.0, 0.0, 0.0, 2.0, 1.0]
    assert cond.property_mask.tolist() == [[False, False], [False, False], [False, False], [True, False], [False, True]]
    assert cond.properties[3, 0].item() == pytest.approx((-2.0 + 1.5) / 0.8)
    out = g.sample_requests(reqs, sampler="ddpm", steps=10, seed=0, batch_size=2)  # three denoising loops
    assert len(out) == 5
    assert _formula_counts(out[1]) == {"Fe": 2, "O": 3}
    assert _formula_counts(out[3]) == {"Li": 1, "Fe": 1, "P": 1, "O": 4}
    assert out[2] is None or set(_formula_counts(out[2])) <= {"Fe", "O"}
    for s in (out[0], out[4]):
        assert s is None or set(_formula_counts(s)) <= {"Li", "Fe", "O", "P"}


def test_seeds_make_sampling_reproducible(ckpt):
    g = load_generator(str(ckpt), device="cpu")
    a = g.sample(4, composition="FeO", steps=6, seed=3, eta=0.5)
    b = g.sample(4, composition="FeO", steps=6, seed=3, eta=0.5)
    c = g.sample(4, composition="FeO", steps=6, seed=4, eta=0.5)
    assert [s.frac_coords.tolist() for s in a] == [s.frac_coords.tolist() for s in b]
    assert [s.frac_coords.tolist() for s in a] != [s.frac_coords.tolist() for s in c]


def test_bad_requests_name_the_problem(ckpt):
    g = load_generator(str(ckpt), device="cpu")
    with pytest.raises(ValueError, match="unknown conditioning property"):
        g.sample(2, properties={"bandgap": 1.0})
    with pytest.raises(ValueError, match="outside this model's chemical system"):
        g.sample(2, composition="NaCl")
    with pytest.raises(ValueError, match="exceed max_atoms_per_element"):
        g.sample(2, composition="Fe5O")
    with pytest.raises(ValueError, match="request 1"):
        g.sample_requests([SampleRequest("FeO"), SampleRequest("Xx2")])
    with pytest.raises(ValueError, match="sampler"):
        g.sample(1, sampler="euler")


def test_bf16_generator_path(ckpt):
    g = load_generator(str(ckpt), device="cpu", precision="bf16")
    out = g.sample(2, composition="Fe2O3", steps=4, seed=0)
    assert all(_formula_counts(s) == {"Fe": 2, "O": 3} for s in out)


def test_unimat_sample_cli_writes_cifs_and_summary(ckpt, tmp_path):
    from unimat_dist.cli import main

    out = tmp_path / "samples"
    rc = main(["sample", "--checkpoint", str(ckpt), "--num", "3", "--composition", "Fe2O3", "--steps", "5",
               "--property", "band_gap=1.0", "--guidance", "1.5", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_decoded"] == 3 and summary["formulas"] == ["Fe2O3"] * 3
    assert summary["request"]["properties"] == {"band_gap": 1.0} and summary["checkpoint_step"] == 7
    cifs = sorted((out / "cif").glob("*.cif"))
    assert len(cifs) == 3
    # (untrained: atoms may overlap, which CIF readers merge, so check the written formula itself)
    assert "_chemical_formula_sum   'Fe2 O3'" in cifs[0].read_text()

    out2 = tmp_path / "xyz"
    assert main(["sample", "--checkpoint", str(ckpt), "--num", "2", "--composition", "LiFePO4", "--steps", "3",
                 "--format", "extxyz", "--out", str(out2), "--device", "cpu"]) == 0
    from ase.io import read

    frames = read(out2 / "samples.extxyz", index=":")
    assert len(frames) == 2 and frames[0].get_chemical_formula(mode="hill") == "FeLiO4P"
    assert main(["sample", "--checkpoint", str(ckpt), "--num", "1", "--property", "nonsense", "--out", str(out2)]) == 2


def test_sampling_defaults_travel_in_the_checkpoint(ckpt, tmp_path):
    """`unimat model sampling` writes a copy carrying its sampler settings (the input is never modified);
    `unimat sample` then runs with them, a flag overrides one field, and hostile values are refused."""
    import hashlib

    from unimat_dist.cli import main

    before = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    tuned = tmp_path / "tuned.pt"
    assert main(["model", "sampling", str(ckpt), "--sampler", "ddpm", "--steps", "6", "--noise-scale", "0.3",
                 "--out", str(tuned)]) == 0
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == before
    assert (tmp_path / "tuned.pt.sha256").exists()
    with pytest.raises(SystemExit, match="--out is required"):
        main(["model", "sampling", str(ckpt), "--noise-scale", "0.5"])
    with pytest.raises(SystemExit, match="exists"):
        main(["model", "sampling", str(ckpt), "--noise-scale", "0.5", "--out", str(tuned)])

    g = load_generator(str(tuned), device="cpu")
    assert g.sampling_defaults == {"sampler": "ddpm", "steps": 6, "noise_scale": 0.3}
    assert g.sampling_settings() == {"sampler": "ddpm", "steps": 6, "eta": 0.0, "noise_scale": 0.3, "restart": None}
    assert g.sampling_settings(noise_scale=1.0) == {"sampler": "ddpm", "steps": 6, "eta": 0.0, "noise_scale": 1.0,
                                                    "restart": None}
    # another sampler than the release's: the library's defaults, not a mix
    assert g.sampling_settings(sampler="ddim") == {"sampler": "ddim", "steps": None, "eta": 0.0, "noise_scale": 1.0,
                                                   "restart": None}
    assert load_generator(str(ckpt), device="cpu").sampling_settings() == {
        "sampler": "ddim", "steps": None, "eta": 0.0, "noise_scale": 1.0, "restart": None}

    out = tmp_path / "s"
    assert main(["sample", "--checkpoint", str(tuned), "--num", "2", "--composition", "Fe2O3", "--out", str(out),
                 "--device", "cpu", "--no-gallery"]) == 0
    req = json.loads((out / "summary.json").read_text())["request"]
    assert (req["sampler"], req["steps"], req["eta"], req["noise_scale"]) == ("ddpm", 6, 0.0, 0.3)
    # the same draw as the library call with those settings: the defaults are what ran
    ref = g.sample(2, "Fe2O3", sampler="ddpm", steps=6, noise_scale=0.3, seed=0)
    got = g.sample(2, "Fe2O3", **g.sampling_settings(), seed=0)
    assert all((a.frac_coords == b.frac_coords).all() for a, b in zip(ref, got))
    out2 = tmp_path / "s2"
    assert main(["sample", "--checkpoint", str(tuned), "--num", "1", "--composition", "Fe2O3", "--out", str(out2),
                 "--noise-scale", "1", "--device", "cpu", "--no-gallery"]) == 0
    assert json.loads((out2 / "summary.json").read_text())["request"]["noise_scale"] == 1.0

    # a restart pass travels the same way, and "none" switches it off for one run
    polished = tmp_path / "polished.pt"
    assert main(["model", "sampling", str(tuned), "--restart", "10:3", "--out", str(polished)]) == 0
    gp = load_generator(str(polished), device="cpu")
    assert gp.sampling_defaults["restart"] == [10, 3] and gp.sampling_settings()["restart"] == (10, 3)
    assert gp.sampling_settings(restart=())["restart"] is None
    out3, out4 = tmp_path / "s3", tmp_path / "s4"
    assert main(["sample", "--checkpoint", str(polished), "--num", "1", "--composition", "Fe2O3", "--out", str(out3),
                 "--device", "cpu", "--no-gallery"]) == 0
    assert json.loads((out3 / "summary.json").read_text())["request"]["restart"] == [10, 3]
    assert main(["sample", "--checkpoint", str(polished), "--num", "1", "--composition", "Fe2O3", "--out", str(out4),
                 "--device", "cpu", "--no-gallery", "--restart", "none"]) == 0
    assert json.loads((out4 / "summary.json").read_text())["request"]["restart"] is None
    assert main(["model", "sampling", str(tuned), "--restart", "100:3", "--out", str(tmp_path / "x.pt")]) == 2

    # drawing compositions without repeats is a release setting too; a flag turns it off for one run
    distinct = tmp_path / "distinct.pt"
    assert main(["model", "sampling", str(tuned), "--distinct-compositions", "on", "--out", str(distinct)]) == 0
    gd = load_generator(str(distinct), device="cpu")
    assert gd.sampling_defaults["distinct_compositions"] is True and gd.distinct_compositions
    assert gd.sampling_settings() == g.sampling_settings()  # not a sampler field
    assert not g.distinct_compositions
    out5 = tmp_path / "s5"
    assert main(["sample", "--checkpoint", str(distinct), "--num", "1", "--composition", "Fe2O3", "--out", str(out5),
                 "--device", "cpu", "--no-gallery", "--distinct-compositions", "off"]) == 0
    assert json.loads((out5 / "summary.json").read_text())["request"]["distinct_compositions"] is False

    payload = load_inference_checkpoint(str(ckpt))
    for bad, match in (({"noise_scale": 2.0}, "noise_scale"), ({"sampler": "euler"}, "sampler"),
                       ({"restart": [100, 20]}, "restart t"), ({"restart": [10, 20]}, "restart"),
                       ({"restart": [10]}, "restart"), ({"restart": [True, 1]}, "restart"),
                       ({"steps": 101}, "exceed"), ({"steps": True}, "steps"), ({"temperature": 0.1}, "keys"),
                       ({"distinct_compositions": "yes"}, "distinct_compositions"),
                       ("ddpm", "mapping")):
        p = dict(payload, sampling=bad)
        p.pop("path")
        path = tmp_path / "bad.pt"
        save_inference_checkpoint(p, str(path))
        with pytest.raises(ValueError, match=match):
            load_inference_checkpoint(str(path))
