"""The batching core of the service and the batch job, without Ray: grouping and packing of requests into
denoising loops, per-request random streams (a request's crystals do not depend on its batch mates),
validation messages, validity flags and the request schema. An untrained tiny model suffices: what is
tested is the machinery."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from deploy.schemas import ApiError, parse_generate_request
from unimat_dist.diffusion.noise import RowGenerators, randn
from unimat_dist.generation import (
    GenerationJob,
    plan_loops,
    run_jobs,
    structure_to_cif,
    structure_to_json,
    summarize_flags,
    validity_flags,
)
from unimat_dist.generation.records import composition_valid
from unimat_dist.inference import StructureGenerator

from generation_fixtures import make_job, perturbed_tiny_generator  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def g() -> StructureGenerator:
    return perturbed_tiny_generator()



def _coords(structures):
    return [(s.species, np.asarray(s.frac_coords), s.lattice.matrix) for s in structures]


def test_plan_loops_groups_by_sampler_and_steps_and_never_splits_a_request():
    jobs = [GenerationJob(n, sampler=s, steps=k) for n, s, k in
            [(3, "ddim", 10), (4, "ddim", 7), (200, "ddim", 10), (100, "ddim", 10), (1, "ddim", 7), (5, "ddpm", 10),
             (300, "ddim", 10)]]
    loops = plan_loops(jobs, 256)
    assert loops == [[0, 2], [3], [6], [1, 4], [5]]  # groups in arrival order; 300 > 256 runs alone
    for members in loops:
        assert len({jobs[i].loop_key for i in members}) == 1
        assert sum(jobs[i].num_samples for i in members) <= 256 or len(members) == 1
    assert sorted(i for m in loops for i in m) == list(range(len(jobs)))
    with pytest.raises(ValueError):
        plan_loops(jobs, 0)


def test_row_generators_give_each_group_its_own_stream():
    a = RowGenerators.seeded([1, 2], [2, 3])
    b = RowGenerators.seeded([9, 2], [4, 3])
    x, y = randn((5, 6), a, "cpu"), randn((7, 6), b, "cpu")
    assert torch.equal(x[2:], y[4:])  # seed 2's rows are the same whatever precedes them
    assert not torch.equal(x[:2], y[:2])
    g1 = torch.Generator().manual_seed(1)
    first = randn((5, 6), RowGenerators.seeded([1, 2], [2, 3]), "cpu")[:2]
    assert torch.equal(first, torch.randn((2, 6), generator=g1))
    with pytest.raises(ValueError, match="4 rows requested from generators covering 5"):
        randn((4, 6), RowGenerators.seeded([1, 2], [2, 3]), "cpu")
    with pytest.raises(ValueError):
        RowGenerators.seeded([1], [0])


@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0)])
def test_a_request_is_reproducible_whatever_its_batch_mates(g, sampler, eta):
    """Ancestral noise included (DDPM, DDIM with eta=1): equal up to float rounding of batched kernels."""
    mine = dict(comp="SrTiO3", seed=77, sampler=sampler, eta=eta)
    alone = run_jobs(g, [make_job(g, 3, **mine)])[0]
    mates = run_jobs(g, [make_job(g, 5, None, 1, sampler, eta=eta), make_job(g, 3, **mine),
                         make_job(g, 2, "LiFePO4", 3, sampler, eta=eta, exact_counts=False)])[1]
    for (sa, xa, la), (sb, xb, lb) in zip(_coords(alone), _coords(mates)):
        assert sa == sb
        np.testing.assert_allclose(xa, xb, atol=1e-4)
        np.testing.assert_allclose(la, lb, atol=1e-3)
    other_seed = run_jobs(g, [make_job(g, 3, "SrTiO3", 78, sampler, eta=eta)])[0]
    assert not np.allclose(np.asarray(other_seed[0].frac_coords), np.asarray(alone[0].frac_coords))


def test_one_loop_mixes_compositions_properties_and_guidance(g):
    jobs = [make_job(g, 2, "SrTiO3", 1), make_job(g, 2, {"Li": 1, "Fe": 1, "P": 1, "O": 4}, 2),
            make_job(g, 2, "FeO", 3, exact_counts=False),
            make_job(g, 2, None, 4, properties={"band_gap": 2.0}, guidance=2.0),
            make_job(g, 1, "Fe2O3", 5, sampler="ddpm")]
    seen = []
    out = run_jobs(g, jobs, 64, on_loop=seen.append)
    assert [(s.jobs, s.rows, s.sampler) for s in seen] == [(4, 8, "ddim"), (1, 1, "ddpm")]
    assert [len(o) for o in out] == [2, 2, 2, 2, 1]
    counts = lambda s: {str(e): int(n) for e, n in s.composition.get_el_amt_dict().items()}  # noqa: E731
    assert all(counts(s) == {"Sr": 1, "Ti": 1, "O": 3} for s in out[0])
    assert all(counts(s) == {"Li": 1, "Fe": 1, "P": 1, "O": 4} for s in out[1])
    assert all(set(counts(s)) <= {"Fe", "O"} for s in out[2] if s is not None)
    assert counts(out[4][0]) == {"Fe": 2, "O": 3}
    flags = [validity_flags(s, "SrTiO3") for s in out[0]]
    assert all(f["decoded"] and f["matches_request"] for f in flags)


def test_prepare_job_names_the_problem(g):
    for comp, match in (("Xx2", "unknown element"), ("Ba2O", "outside this model"), ("Sr5O", "exceed"),
                        ({"Fe": 1.5}, "whole numbers"), ("", "empty composition")):
        with pytest.raises(ValueError, match=match):
            make_job(g, 1, comp)
    with pytest.raises(ValueError, match="unknown conditioning property"):
        make_job(g, 1, properties={"heat_ref": 1.0})
    with pytest.raises(ValueError, match="steps must be between 1 and the model's T=50"):
        make_job(g, 1, steps=51)
    with pytest.raises(ValueError, match="sampler"):
        make_job(g, 1, sampler="euler")
    with pytest.raises(ValueError, match="num_samples"):
        make_job(g, 0)
    assert make_job(g, 1, steps=None).steps == 50 and make_job(g, 1, sampler="ddpm", steps=None).steps == 50


def test_records_and_flags():
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice.cubic(3.9), ["Sr", "Ti", "O", "O", "O"],
                  [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    f = validity_flags(s, {"Sr": 1, "Ti": 1, "O": 3})
    assert f == {"decoded": True, "structure_valid": True, "composition_valid": True, "matches_request": True}
    assert validity_flags(s, "SrTiO2")["matches_request"] is False
    assert validity_flags(s, "SrTiO2", exact_counts=False)["matches_request"] is True  # same element set
    assert validity_flags(None, "SrTiO3")["decoded"] is False
    cif = structure_to_cif(s, "req 1/a__0")
    assert "data_req_1_a__0\n" in cif
    js = structure_to_json(s)
    assert js["species"] == ["Sr", "Ti", "O", "O", "O"] and abs(js["lattice"]["volume"] - 3.9**3) < 1e-6
    summary = summarize_flags([f, validity_flags(None, "SrTiO3"), validity_flags(s, None)])
    assert summary["count"] == 3 and summary["decoded"] == 2 and summary["matches_request"] == 1
    assert summary["matches_request_rate"] == 0.5  # the unconditional crystal does not count
    # a 30-element crystal would make SMACT enumerate ~1e14 oxidation states: not evaluated
    many = ["Li", "Be", "Na", "Mg", "Al", "K", "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga",
            "Rb", "Sr", "Y", "Zr", "Nb", "Mo", "Ru", "Rh", "Pd", "Ag", "Cd", "In", "O", "S", "N", "F", "Cl"]
    coords = [[i / 40, (i * 7 % 40) / 40, (i * 13 % 40) / 40] for i in range(len(many))]
    big = Structure(Lattice.cubic(20), many, coords)
    assert composition_valid(big) is None


def test_request_schema():
    r = parse_generate_request(b'{"num_samples": 3, "composition": {"Fe": 2, "O": 3}, "seed": 5}', 1000)
    assert r.num_samples == 3 and r.composition == {"Fe": 2, "O": 3} and r.format is None
    # sampler settings left out stay null: the model's defaults fill them (the checkpoint's, else DDIM, eta 0, lambda 1)
    assert r.sampler is None and r.steps is None and r.eta is None and r.noise_scale is None
    deep = b'{"a":' * 1000 + b"[" * 1000 + b"]" * 1000 + b"}" * 1000  # deeper than the JSON parser's stack
    for body, status, field in ((b"{", 400, None), (b"null", 400, None), (deep, 400, None),
                                (b'{"steps": 2.5}', 422, "steps"), (b'{"guidance": Infinity}', 422, "guidance"),
                                (b'{"seed": 9223372036854775808}', 422, "seed"),
                                (b'{"sampler": "DDIM"}', 422, "sampler"), (b'{"noise_scale": -0.1}', 422, "noise_scale"),
                                (b"x" * 10_001, 413, None)):
        with pytest.raises(ApiError) as exc:
            parse_generate_request(body, 10_000)
        assert exc.value.status == status and exc.value.field == field, (body, exc.value.message)


def test_serve_config_and_kuberay_manifest_are_valid_and_agree():
    """Both deployment files pass Ray Serve's own schema, build the app from their args, and keep
    max_ongoing_requests >= max_batch_size (else Serve would cap every batch)."""
    from pathlib import Path

    import yaml
    from ray.serve.schema import ServeDeploySchema

    from deploy.app import build_app
    from deploy.settings import load_settings

    root = Path(__file__).resolve().parents[1] / "deploy"
    local = yaml.safe_load((root / "serve_config.yaml").read_text())
    manifest = yaml.safe_load((root / "kuberay-rayservice.yaml").read_text())
    assert manifest["kind"] == "RayService" and manifest["spec"]["rayClusterConfig"]["rayVersion"] == "2.60.0"
    cluster = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert local["http_options"]["host"] == "127.0.0.1"
    for cfg in (local, cluster):
        schema = ServeDeploySchema.model_validate(cfg)
        app = schema.applications[0]
        assert app.import_path == "deploy.app:build_app" and app.deployments[0].name == "UniMatGenerator"
        settings = load_settings(app.args)
        build_app(app.args)
        dep = app.deployments[0]
        assert dep.max_ongoing_requests >= settings.max_batch_size
        assert dep.autoscaling_config["min_replicas"] >= 1
        assert dep.autoscaling_config["target_ongoing_requests"] <= dep.max_ongoing_requests
    assert cluster["applications"][0]["deployments"][0]["ray_actor_options"]["num_gpus"] == 1
