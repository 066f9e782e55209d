"""Proxy metrics end to end on the bundled test splits (subsamples), the fingerprint cache, known-invalid
structures, uniqueness/novelty and the ``unimat evaluate proxy`` command."""
import json

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from unimat_dist.evaluation.emd import emd
from unimat_dist.evaluation.proxy import proxy_evaluation
from unimat_dist.evaluation.structures_io import StructureRecord, load_structures, write_cifs, write_extxyz

N = 100  # perovskites per side: ~10 s of CrystalNN on 2 cores


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    import os

    d = tmp_path_factory.mktemp("unimat_cache")
    old = os.environ.get("UNIMAT_CACHE")
    os.environ["UNIMAT_CACHE"] = str(d)
    os.environ["UNIMAT_SHIPPED_FEATURES"] = "0"  # these tests exercise computing and the user cache
    yield d
    os.environ.pop("UNIMAT_SHIPPED_FEATURES")
    if old is None:
        os.environ.pop("UNIMAT_CACHE")
    else:
        os.environ["UNIMAT_CACHE"] = old


@pytest.fixture(scope="module")
def perov_self(bundled, cache_dir):
    """Perov-5 test subsample evaluated against itself (novelty against the val split stand-in)."""
    return proxy_evaluation(bundled["perov_5"]["test"], bundled["perov_5"]["test"], "perov5",
                            train=bundled["perov_5"]["val"], limit_generated=N, limit_reference=N,
                            limit_train=300, workers=2, progress=False)


def test_test_split_against_itself(perov_self):
    m, gen, ref = perov_self.metrics, perov_self.generated, perov_self.reference
    assert m["n_generated"] == m["n_reference"] == N
    assert m["cov_recall"] == 1.0 and m["cov_precision"] == 1.0
    assert m["struct_validity"] == 1.0
    assert m["amsd_recall"] < 1e-6 and m["amcd_recall"] < 1e-6  # identical fingerprints
    # EMDs are not 0: composition-invalid test crystals drop out of the generated side only.
    n_invalid = sum(not g.comp_valid for g in gen)
    assert m["n_valid"] == N - n_invalid and m["comp_validity"] == pytest.approx((N - n_invalid) / N)
    valid = [g for g in gen if g.valid]
    assert m["emd_density"] == pytest.approx(emd([g.density for g in valid], [r.density for r in ref]))
    assert m["emd_num_elements"] == pytest.approx(emd([g.n_elements for g in valid], [r.n_elements for r in ref]))
    if n_invalid:
        assert m["emd_density"] > 0
    else:
        assert m["emd_density"] == 0
    # fewer than 1000 valid: all are used and the output says so; the seed is recorded
    assert m["emd_n_valid_used"] == m["n_valid"] and not m["emd_subsampled"] and "all are used" in m["emd_note"]
    assert m["emd_seed"] == 0
    # perovskites in a random split are all different; none of these 100 is in the first 300 val rows
    assert m["unique_fraction"] == 1.0 and m["uniqueness_matbench"] == 1.0
    assert 0.9 <= m["novelty"] <= 1.0
    for key in ("struct_validity", "comp_validity", "cov_recall", "cov_precision", "emd_density", "emd_num_elements"):
        assert key in m


def test_reference_fingerprints_are_cached(bundled, perov_self, cache_dir):
    assert perov_self.metrics["reference_cache_hit"] is False
    again = proxy_evaluation(bundled["perov_5"]["test"], bundled["perov_5"]["test"], "perov5", limit_generated=10,
                             limit_reference=N, uniqueness=False, novelty=False, workers=1, progress=False)
    assert again.metrics["reference_cache_hit"] is True
    assert again.metrics["reference_sha256"] == perov_self.metrics["reference_sha256"]
    assert [r.id for r in again.reference] == [r.id for r in perov_self.reference]
    assert np.allclose(again.reference[7].struct_fp, perov_self.reference[7].struct_fp)
    assert list((cache_dir / "eval" / "features").glob("*.json"))


def test_known_invalid_structures_are_flagged_and_counted(bundled, perov_self):
    good = load_structures(bundled["perov_5"]["test"], limit=20)
    bad = [
        StructureRecord("close", Structure(Lattice.cubic(4.0), ["Sr", "Ti", "O", "O", "O"],
                                           [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0.05, 0.05, 0]])),
        StructureRecord("tiny", Structure(Lattice.cubic(0.4), ["Sr", "Ti", "O", "O", "O"],
                                          [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])),
        StructureRecord("nacl2", Structure(Lattice.cubic(5.0), ["Na", "Cl", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5], [0, 0, 0.5]])),
        StructureRecord("garbage", None, "garbage: unparseable CIF"),
    ]
    res = proxy_evaluation(good + bad, bundled["perov_5"]["test"], "perov5", limit_reference=N, uniqueness=False,
                           novelty=False, workers=1, progress=False)
    m = res.metrics
    byid = {g.id: g for g in res.generated}
    assert not byid["close"].struct_valid and byid["close"].comp_valid
    assert not byid["tiny"].constructed and not byid["tiny"].struct_valid
    assert byid["nacl2"].struct_valid and not byid["nacl2"].comp_valid
    assert not byid["garbage"].valid
    n_good_struct = sum(g.struct_valid for g in res.generated[:20])
    assert m["n_generated"] == 24
    assert m["struct_validity"] == pytest.approx((n_good_struct + 1) / 24)  # only nacl2 is structurally fine
    # COV-P divides by all 24 generated crystals, including the 2 without fingerprints
    assert m["cov_precision"] <= 22 / 24


def test_uniqueness_and_novelty_detect_duplicates_and_training_members(bundled):
    recs = load_structures(bundled["mp_20_subset"]["train"], limit=12)
    twin = recs[3].structure.copy()
    twin.perturb(0.01, seed=0)
    gen = recs[:6] + [StructureRecord("twin", twin)]
    res = proxy_evaluation(gen, bundled["mp_20_subset"]["test"], "mp20", train=recs, limit_reference=30, workers=1,
                           progress=False)
    m = res.metrics
    assert m["n_unique"] == 6 and m["unique_fraction"] == pytest.approx(6 / 7)
    assert m["uniqueness_matbench"] == pytest.approx(1 - 2 / (7 * 6))  # one matching pair, counted both ways
    assert m["novelty"] == 0.0  # every generated structure is (a perturbed copy of) a training structure
    assert m["cov_struct_cutoff"] == 0.4 and m["cov_comp_cutoff"] == 10.0


def test_cli_proxy_on_cif_folder_and_extxyz(bundled, tmp_path, cache_dir):
    from unimat_dist.cli import main

    recs = load_structures(bundled["carbon_24"]["test"], limit=24)
    folder = tmp_path / "cifs"
    write_cifs([(r.id, r.structure) for r in recs], folder)
    xyz = write_extxyz(recs, tmp_path / "gen.extxyz")
    out = tmp_path / "m.json"
    rc = main(["evaluate", "proxy", "--generated", str(folder), "--reference", "carbon_24:test", "--dataset",
               "carbon24", "--limit-reference", "24", "--no-novelty", "--workers", "1", "--out", str(out),
               "--report", str(tmp_path / "report")])
    assert rc == 0
    m = json.loads(out.read_text())
    assert m["n_generated"] == 24 and m["cov_recall"] == 1.0 and m["cov_precision"] == 1.0
    assert m["comp_validity"] == 1.0  # single element
    for f in ("metrics.json", "summary.md", "summary.html", "plots/density.png", "plots/num_elements.png"):
        assert (tmp_path / "report" / f).exists(), f
    assert "CDVAE (Xie et al. 2022)" in (tmp_path / "report" / "summary.md").read_text()
    # the report's gallery: the 24 generated crystals, reference crystals of the same composition, COV at the top
    text = (tmp_path / "report" / "gallery" / "data" / "crystals.js").read_text()
    data = json.loads(json.loads(text[text.index("(") + 1:text.rindex(")")]))
    assert len(data["crystals"]) == 24 and data["references"] and data["meta"]["reference"] == "carbon_24:test"
    assert data["meta"]["metrics"][0]["values"]["cov_recall"] == 1.0
    assert (tmp_path / "report" / "gallery" / "index.html").is_file()
    out2 = tmp_path / "m2.json"
    assert main(["evaluate", "proxy", "--generated", str(xyz), "--reference", "carbon_24:test", "--dataset",
                 "carbon_24", "--limit-reference", "24", "--no-novelty", "--no-uniqueness", "--workers", "1",
                 "--out", str(out2)]) == 0
    m2 = json.loads(out2.read_text())
    assert m2["cov_recall"] == 1.0 and m2["emd_density"] == pytest.approx(m["emd_density"], abs=1e-9)


def test_cli_errors_are_clear(tmp_path, capsys):
    from unimat_dist.cli import main

    rc = main(["evaluate", "proxy", "--generated", str(tmp_path / "missing"), "--reference", "perov_5:test",
               "--dataset", "perov5"])
    assert rc == 2 and "missing" in capsys.readouterr().err
    rc = main(["evaluate", "proxy", "--generated", "perov_5:test", "--reference", "perov_5:test", "--dataset", "qm9"])
    assert rc == 2 and "qm9" in capsys.readouterr().err


def test_random_airss_like_structures_score_worse_than_the_test_split(bundled, perov_self, capsys):
    """The CI baseline: random symmetric structures with the test compositions (soft-sphere pre-relaxed,
    not relaxed) against the same reference subsample; its numbers are printed for the README."""
    from unimat_dist.evaluation.airss import generate_random_structures

    comps = [r.structure.composition.formula.replace(" ", "") for r in load_structures(bundled["perov_5"]["test"], limit=40)]
    recs = generate_random_structures(comps, n_per_composition=1, seed=0)
    res = proxy_evaluation(recs, bundled["perov_5"]["test"], "perov5", limit_reference=N, uniqueness=False,
                           novelty=False, workers=2, progress=False)
    m, ref = res.metrics, perov_self.metrics
    assert m["n_generated"] == 40
    assert m["comp_validity"] == pytest.approx(np.mean([g.comp_valid for g in perov_self.generated][:40]), abs=0.1)
    assert m["cov_precision"] < ref["cov_precision"] and m["cov_recall"] < ref["cov_recall"]
    assert m["amsd_precision"] > 10 * max(ref["amsd_precision"], 1e-3)
    with capsys.disabled():
        keys = ("struct_validity", "comp_validity", "cov_recall", "cov_precision", "emd_density", "emd_num_elements")
        print("\n[perov_5 test vs itself, n=%d] " % N + " ".join(f"{k}={ref[k]:.4g}" for k in keys))
        print("[random AIRSS-like, n=40 vs test n=%d] " % N + " ".join(f"{k}={m[k]:.4g}" for k in keys))
