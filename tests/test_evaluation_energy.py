"""Energy/stability metrics: hull and formation-energy conventions, the paper's set comparisons on
hand-made sets with known answers, CHGNet relaxation, the AIRSS-like baseline and the CLI."""
import json

import numpy as np
import pytest
from pymatgen.core import Composition, Lattice, Structure

from unimat_dist.evaluation.energy import dft_records
from unimat_dist.evaluation.energy_metrics import compare_sets, convergence_rate, stability_counts, sun_rate
from unimat_dist.evaluation.hull import ReferenceHull, formation_energy_per_atom
from unimat_dist.evaluation.structures_io import load_structures


def rec(formula, ef, converged=True, target=None, e_hull=None):
    return {"formula": formula, "e_form_per_atom": ef, "converged": converged, "target": target, "e_hull": e_hull}


def test_compare_sets_known_answer():
    a = [rec("NaCl", -2.0), rec("NaCl", -1.5), rec("KCl", -1.0, False), rec("KCl", -1.2), rec("LiF", -3.0),
         rec("MgO", -3.1, False)]
    b = [rec("NaCl", -1.8), rec("KCl", -1.4), rec("KCl", -2.5, False), rec("LiF", -2.9), rec("CaO", -3.0)]
    c = compare_sets(a, b)
    # best converged E_f: A NaCl -2.0, KCl -1.2, LiF -3.0 ; B NaCl -1.8, KCl -1.4, LiF -2.9
    deltas = {r["composition"]: r["delta"] for r in c["per_composition"]}
    assert deltas == pytest.approx({"NaCl": -0.2, "KCl": 0.2, "LiF": -0.1})
    assert c["n_common_compositions"] == 3
    assert c["ef_reduction_rate"] == pytest.approx(2 / 3)
    assert c["mean_delta_ef"] == pytest.approx((-0.2 + 0.2 - 0.1) / 3)
    # A: NaCl, KCl, LiF converged, MgO not -> 3/4 ; B: all 4 compositions have a converged structure
    assert c["convergence_rate_a"] == pytest.approx(3 / 4) and c["convergence_rate_b"] == 1.0
    assert [r["composition"] for r in c["per_composition"]] == ["NaCl", "LiF", "KCl"]  # sorted by delta


def test_conditional_generation_uses_targets():
    model = [rec("NaCl", -1.9, True, "Na4Cl4"), rec("NaCl", -1.0, False, "Na4Cl4"), rec("KCl", None, False, "K4Cl4")]
    airss = [rec("NaCl", -1.7, True, "Na4Cl4"), rec("KCl", -1.6, True, "K4Cl4")]
    cr = convergence_rate(model, key="target")
    assert cr["convergence_rate"] == 0.5 and cr["n_compositions"] == 2
    c = compare_sets(model, airss, key="target")
    assert c["n_common_compositions"] == 1 and c["ef_reduction_rate"] == 1.0
    assert c["mean_delta_ef"] == pytest.approx(-0.2)
    assert c["convergence_rate_a"] == 0.5 and c["convergence_rate_b"] == 1.0


def test_stability_counts_and_sun():
    eh = [-0.05, 0.0, 0.01, 0.024, 0.03, 0.2, None]
    s = stability_counts(eh)
    assert s["n_stable"] == 1 and s["n_metastable"] == 4 and s["n_with_e_hull"] == 6
    sun = sun_rate([-0.05, -0.01, 0.05, -0.2], [True, True, True, False], [True, False, True, True], threshold=0.0)
    assert sun["n_sun"] == 1 and sun["sun_rate"] == 0.25  # only the first is stable, unique and novel
    sun = sun_rate([-0.05, -0.01, 0.05, -0.2], [True, True, True, False], [True, False, True, True], threshold=0.1)
    assert sun["n_sun"] == 2
    sun = sun_rate([-0.05], [True], [True], converged=[False])
    assert sun["n_sun"] == 0


def test_hull_conventions_hand_made():
    # A-B system with AB at -1.0 eV/atom: hull at x_B = 0.25 is -0.5
    hull = ReferenceHull([("AlNi", -1.0)])
    assert hull.hull_energy("Al3Ni") == pytest.approx(-0.5)
    assert hull.e_hull("AlNi", -1.2) == pytest.approx(-0.2)  # below the hull: negative
    assert hull.e_hull("Al3Ni", -0.4) == pytest.approx(0.1)
    assert hull.e_hull("Al", 0.0) == pytest.approx(0.0)
    assert hull.e_hull("Cu", 0.05) == pytest.approx(0.05)  # element absent from the points: reference 0
    mu = {"Na": -1.3, "Cl": -1.8}
    assert formation_energy_per_atom(Composition("NaCl"), -3.5, mu) == pytest.approx(-1.95)
    assert formation_energy_per_atom(Composition("NaCl3"), -2.0, mu) == pytest.approx(-2.0 + (1.3 + 3 * 1.8) / 4)
    with pytest.raises(ValueError, match="K"):
        formation_energy_per_atom(Composition("KCl"), -3.0, mu)


def test_bundled_mp20_hull_reproduces_mp_e_above_hull(bundled):
    hull = ReferenceHull.from_mp20([bundled["mp_20_subset"][s] for s in ("train", "val", "test")])
    assert len(hull) == 847 + 123 + 142
    for split in ("train", "val", "test"):
        rows = dft_records(bundled["mp_20_subset"][split], hull)
        from unimat_dist.datasets import iter_cdvae_csv

        mp = [r.properties["e_above_hull"] for r in iter_cdvae_csv(bundled["mp_20_subset"][split])]
        ours = np.array([r["e_hull"] for r in rows])
        assert np.abs(ours - np.array(mp)).max() < 1e-9, split
    # on-hull rows give exactly 0 with DFT energies
    on_hull = [r for r, e in zip(rows, mp) if e == 0.0]
    assert on_hull and all(abs(r["e_hull"]) < 1e-9 for r in on_hull)


def test_soft_sphere_forces_and_separation():
    from ase import Atoms

    from unimat_dist.evaluation.soft_sphere import SoftSphere, soft_sphere_relax

    atoms = Atoms("NaClNa", positions=[[0, 0, 0], [1.0, 0.3, 0], [0.2, 1.2, 0.4]], cell=[6, 6, 6], pbc=True)
    atoms.calc = SoftSphere({11: 1.8, 17: 1.0})
    f = atoms.get_forces()
    num = np.zeros_like(f)
    h = 1e-5
    for i in range(len(atoms)):
        for k in range(3):
            p = atoms.get_positions()
            p[i, k] += h
            atoms.set_positions(p)
            ep = atoms.get_potential_energy()
            p[i, k] -= 2 * h
            atoms.set_positions(p)
            em = atoms.get_potential_energy()
            p[i, k] += h
            atoms.set_positions(p)
            num[i, k] = -(ep - em) / (2 * h)
    assert np.allclose(f, num, atol=1e-6)
    s = Structure(Lattice.cubic(8.0), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]])
    relaxed = soft_sphere_relax(s)
    assert relaxed.distance_matrix[0, 1] > 2.0 > s.distance_matrix[0, 1]


def test_airss_random_structures_are_seeded_and_well_formed():
    from unimat_dist.evaluation.airss import generate_random_structures, parse_composition

    assert parse_composition("Li4O2") == {"Li": 4, "O": 2}
    with pytest.raises(ValueError, match="integers"):
        parse_composition("Li0.5O")
    a = generate_random_structures(["Na2Cl2", "Si4"], n_per_composition=3, seed=7, volume_range=(0.6, 1.2))
    b = generate_random_structures(["Na2Cl2", "Si4"], n_per_composition=3, seed=7, volume_range=(0.6, 1.2))
    assert [r.id for r in a] == ["Na2Cl2__0", "Na2Cl2__1", "Na2Cl2__2", "Si4__0", "Si4__1", "Si4__2"]
    for ra, rb in zip(a, b):
        assert ra.structure is not None and ra.structure.composition == rb.structure.composition
        assert np.allclose(ra.structure.lattice.matrix, rb.structure.lattice.matrix)
        assert 0.6 <= ra.metadata["volume_factor"] <= 1.2
    assert a[0].structure.composition == Composition("Na2Cl2") and a[0].metadata["target_id"] == "Na2Cl2"
    c = generate_random_structures(["Na2Cl2"], n_per_composition=1, seed=8)
    assert not np.allclose(c[0].structure.lattice.matrix, a[0].structure.lattice.matrix)


def test_chgnet_relaxes_a_perturbed_real_structure_back(bundled):
    from unimat_dist.evaluation.potential import relax, static_energies

    s0 = next(r.structure for r in load_structures(bundled["mp_20_subset"]["test"]) if len(r.structure) == 4)
    ref = relax(s0, steps=200, fmax=0.05)
    assert ref.converged
    bad = s0.copy()
    bad.perturb(0.15, min_distance=0.1, seed=0)
    bad.apply_strain(0.04)
    res = relax(bad, steps=300, fmax=0.05)
    assert res.error is None and res.converged and res.n_steps > 5
    assert res.e_final_per_atom < res.e_initial_per_atom - 0.01  # energy went down
    assert res.e_final_per_atom == pytest.approx(ref.e_final_per_atom, abs=0.01)  # back into the same minimum
    # converged is judged on the cell filter's (deformation-scaled) forces: raw forces may sit a hair above
    assert res.rmsd > 0.05 and res.max_force_final < 0.06
    assert res.volume_ratio == pytest.approx(ref.final_structure.volume / bad.volume, rel=0.02)
    e_static = static_energies([res.final_structure])[0]
    assert e_static == pytest.approx(res.e_final_per_atom, abs=1e-4)
    dense = Structure(Lattice.cubic(1.0), ["Na"], [[0, 0, 0]])
    assert "too dense" in relax(dense).error  # guarded: would blow up CHGNet's neighbour graph


def test_on_hull_test_structures_have_small_e_hull_with_chgnet(bundled):
    """E_hull of MP-20 test structures on the MP hull: exactly 0 with DFT (above), small with CHGNet
    at the DFT geometry (full-set MAE in docs/evaluation.md: 0.058 eV/atom over 54 structures)."""
    from unimat_dist.datasets import iter_cdvae_csv
    from unimat_dist.evaluation.property_model import chgnet_formation_energy

    hull = ReferenceHull.from_mp20([bundled["mp_20_subset"][s] for s in ("train", "val", "test")])
    recs = load_structures(bundled["mp_20_subset"]["test"])
    props = [r.properties for r in iter_cdvae_csv(bundled["mp_20_subset"]["test"])]
    on_hull = [r for r, p in zip(recs, props) if p["e_above_hull"] == 0.0][:15]
    ef = chgnet_formation_energy([r.structure for r in on_hull])
    eh = np.array([hull.e_hull(r.structure.composition, e) for r, e in zip(on_hull, ef)])
    mae = float(np.abs(eh).mean())
    print(f"\n[CHGNet E_hull of {len(eh)} on-hull MP-20 test structures] MAE {mae:.3f} eV/atom, mean {eh.mean():+.3f}")
    assert mae < 0.12


def test_cli_energy_baseline_and_compare_end_to_end(bundled, tmp_path):
    from unimat_dist.cli import main
    from unimat_dist.evaluation.energy import load_energy_records
    from unimat_dist.evaluation.structures_io import write_cifs

    # "model" samples for target Na4Cl4: rock salt (right answer) named <target>__<k>.cif
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    folder = tmp_path / "model"
    write_cifs([("Na4Cl4__0", nacl), ("Na4Cl4__1", nacl)], folder)
    assert main(["evaluate", "energy", "--generated", str(folder), "--steps", "30", "--workers", "1",
                 "--records", str(tmp_path / "model.jsonl"), "--out", str(tmp_path / "model.json"),
                 "--report", str(tmp_path / "model_report")]) == 0
    m = json.loads((tmp_path / "model.json").read_text())
    assert m["n_structures"] == 2 and m["n_converged"] == 2 and m["composition_key"] == "target"
    model = load_energy_records(tmp_path / "model.jsonl")
    assert model[0]["target"] == "Na4Cl4" and model[0]["formula"] == "NaCl"
    assert model[0]["e_form_per_atom"] == pytest.approx(-2.1, abs=0.25)  # MP: -2.10 eV/atom
    # no Na-Cl phase among the bundled MP-20 hull points: the hull at NaCl is the elements' 0
    assert model[0]["e_hull"] == pytest.approx(model[0]["e_form_per_atom"] - ReferenceHull.from_mp20().hull_energy("NaCl"))
    for f in ("summary.md", "summary.html", "plots/e_hull.png", "plots/e_form.png", "gallery/index.html"):
        assert (tmp_path / "model_report" / f).exists(), f
    gallery = (tmp_path / "model_report" / "gallery" / "data" / "crystals.js").read_text()
    assert gallery.count("e_hull") >= 2 and "NaCl" in gallery  # the relaxed crystals with their energies

    # AIRSS-like baseline for the same composition, tiny: 2 random structures, few steps
    airss = tmp_path / "airss"
    assert main(["baseline", "airss", "--compositions", "Na4Cl4", "--n-per-composition", "2", "--steps", "30",
                 "--workers", "1", "--out", str(airss)]) == 0
    base = load_energy_records(airss / "records.jsonl")
    assert len(base) == 2 and all(r["target"] == "Na4Cl4" for r in base)
    assert len(list((airss / "initial").glob("*.cif"))) == 2 and (airss / "relaxed.extxyz").exists()

    # the paper's comparison: model vs baseline per target composition
    out = tmp_path / "cmp.json"
    assert main(["evaluate", "compare", "--a", str(tmp_path / "model.jsonl"), "--b", str(airss / "records.jsonl"),
                 "--label-a", "model", "--label-b", "airss", "--key", "target", "--out", str(out),
                 "--report", str(tmp_path / "cmp_report")]) == 0
    c = json.loads(out.read_text())
    assert c["convergence_rate_a"] == 1.0 and c["n_compositions_b"] == 1
    if c["n_common_compositions"]:
        best_model = min(r["e_form_per_atom"] for r in model)
        best_airss = min(r["e_form_per_atom"] for r in base if r["converged"])
        assert c["mean_delta_ef"] == pytest.approx(best_model - best_airss)
        assert (tmp_path / "cmp_report" / "plots" / "delta_ef.png").exists()

    # generated vs the DFT test set (formula key)
    out = tmp_path / "vs_dft.json"
    assert main(["evaluate", "energy", "--generated", str(folder), "--steps", "10", "--workers", "1",
                 "--compare-dft", str(bundled["mp_20_subset"]["test"]), "--key", "formula", "--out", str(out)]) == 0
    v = json.loads(out.read_text())
    assert "vs_dft_ef_reduction_rate" in v and v["vs_dft_n_compositions_b"] > 100
