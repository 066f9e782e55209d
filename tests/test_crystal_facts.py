"""Per-crystal facts on real structures: the bundled Perov-5 / Carbon-24 test splits and hand-built crystals
of known symmetry; pathological cells answer with None and a reason instead of hanging."""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from unimat_dist import crystal_facts as cf
from unimat_dist.crystal_facts import FACT_KEYS, crystal_facts
from unimat_dist.datasets.registry import bundled_path
from unimat_dist.evaluation.structures_io import load_structures


def _bundled(name: str, limit: int):
    return [r.structure for r in load_structures(bundled_path(name, "test"), limit=limit)]


def srtio3(a: float = 3.905, ti_shift: float = 0.0) -> Structure:
    return Structure(Lattice.cubic(a), ["Sr", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5 + ti_shift / a], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def diamond() -> Structure:
    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(3.567), ["C"], [[0, 0, 0]])


def test_every_key_present_and_json_able():
    f = crystal_facts(srtio3(), energies={"e_hull": 0.02, "energy_per_atom": np.float64(-7.5)},
                      flags={"decoded": True, "structure_valid": True, "composition_valid": True,
                             "matches_request": None})
    assert list(f)[:len(FACT_KEYS)] == list(FACT_KEYS)
    json.dumps(f, allow_nan=False)
    assert f["formula"] == "SrTiO3" and f["num_atoms"] == 5 and f["elements"] == ["O", "Sr", "Ti"]
    assert f["num_elements"] == 3 and f["symprec"] == 0.1
    assert f["spacegroup_symbol"] == "Pm-3m" and f["spacegroup_number"] == 221
    assert f["loose_spacegroup_number"] is None and f["loose_symprec"] is None and f["symmetry_error"] is None
    assert f["volume"] == pytest.approx(3.905 ** 3) and f["volume_per_atom"] == pytest.approx(3.905 ** 3 / 5)
    assert f["density"] == pytest.approx(5.12, abs=0.02)  # SrTiO3: 5.12 g/cm^3
    assert f["min_distance"] == pytest.approx(3.905 / 2) and f["min_distance_pair"] == "O-Ti"
    assert f["min_distance_ratio"] == pytest.approx(3.905 / 2 / (1.60 + 0.66), rel=1e-3)  # Cordero radii
    assert f["too_close"] is False and f["distance_error"] is None
    assert f["e_hull"] == 0.02 and f["energy_per_atom"] == -7.5 and type(f["energy_per_atom"]) is float
    assert f["e_form_per_atom"] is None and f["structure_valid"] is True and f["matches_request"] is None


def test_cubic_perovskites_of_perov5_are_pm3m():
    structures = _bundled("perov_5", 120)
    facts = [crystal_facts(s) for s in structures]
    assert all(f["symmetry_error"] is None and f["distance_error"] is None for f in facts)
    cubic = [(s, f) for s, f in zip(structures, facts) if f["spacegroup_number"] == 221]
    assert len(cubic) >= 10
    for s, f in cubic:  # a Pm-3m perovskite: cubic cell, 5 atoms, formula ABX3
        assert np.allclose(s.lattice.abc, s.lattice.a, rtol=1e-3) and np.allclose(s.lattice.angles, 90, atol=0.1)
        assert f["spacegroup_symbol"] == "Pm-3m" and f["num_atoms"] == 5
    assert all(0.6 < f["min_distance_ratio"] < 1.2 for f in facts)  # real crystals
    groups = {f["spacegroup_number"] for f in facts}
    assert {221, 99, 123}.issubset(groups)  # Pm-3m, P4mm, P4/mmm all in the test split


def test_diamond_is_fd3m_in_any_cell_and_carbon24_groups():
    d = diamond()
    for s in (d, d.get_primitive_structure(), d * (2, 1, 1)):
        f = crystal_facts(s)
        assert (f["spacegroup_symbol"], f["spacegroup_number"]) == ("Fd-3m", 227)
        assert f["min_distance"] == pytest.approx(3.567 * math.sqrt(3) / 4, rel=1e-6)
        assert f["min_distance_ratio"] == pytest.approx(f["min_distance"] / (2 * 0.76), rel=1e-3)
        assert f["density"] == pytest.approx(3.51, abs=0.01)
    facts = [crystal_facts(s) for s in _bundled("carbon_24", 80)]
    assert any(f["spacegroup_number"] == 227 for f in facts)
    assert all(f["formula"] == "C" and not f["too_close"] for f in facts)


def test_ti_o_at_0_7_angstrom_is_too_close_though_cdvae_valid():
    from unimat_dist.generation.records import validity_flags

    s = Structure(Lattice.cubic(10.0), ["Ti", "O"], [[0, 0, 0], [0.07, 0, 0]])
    f = crystal_facts(s, flags=validity_flags(s))
    assert f["min_distance"] == pytest.approx(0.7) and f["min_distance_pair"] == "O-Ti"
    assert f["min_distance_ratio"] == pytest.approx(0.7 / 2.26, rel=1e-3) and f["too_close"] is True
    assert f["structure_valid"] is True  # CDVAE's 0.5 A rule lets it pass


def test_loose_symprec_finds_the_higher_group():
    s = srtio3(ti_shift=0.08)  # Ti 0.08 A off centre (0.16 A from its mirror image): P4mm at 0.1, Pm-3m at 0.2
    f = crystal_facts(s)
    assert (f["spacegroup_symbol"], f["spacegroup_number"]) == ("P4mm", 99)
    assert (f["loose_spacegroup_symbol"], f["loose_spacegroup_number"], f["loose_symprec"]) == ("Pm-3m", 221, 0.2)
    tight = crystal_facts(s, symprec=0.01)
    assert tight["spacegroup_number"] == 99 and tight["loose_spacegroup_number"] == 221
    assert tight["loose_symprec"] == 0.2
    assert crystal_facts(s, symprec=0.2)["loose_spacegroup_number"] is None  # nothing higher above 0.2
    # bcc iron written as 2 atoms with the body centre 0.03 A off: P4/nmm at 0.01 A, Im-3m from 0.1 A on
    bcc = Structure(Lattice.cubic(3.0), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.51]])
    fb = crystal_facts(bcc)
    assert fb["spacegroup_number"] == 229 and fb["loose_spacegroup_number"] is None
    fb = crystal_facts(bcc, symprec=0.01)
    assert fb["spacegroup_number"] == 129 and fb["loose_spacegroup_number"] == 229 and fb["loose_symprec"] == 0.1


def test_one_atom_cell_and_periodic_images():
    f = crystal_facts(Structure(Lattice.cubic(2.5), ["Cu"], [[0.3, 0.3, 0.3]]))
    assert f["min_distance"] == pytest.approx(2.5) and f["min_distance_pair"] == "Cu-Cu"
    assert f["spacegroup_number"] == 221 and f["num_atoms"] == 1
    # a skewed cell: the shortest distance is through an image the plain cell does not show
    lat = Lattice([[4, 0, 0], [3.9, 0.5, 0], [0, 0, 4]])
    s = Structure(lat, ["Na", "Cl"], [[0.1, 0.1, 0.1], [0.6, 0.6, 0.6]])
    f = crystal_facts(s)
    d = s.distance_matrix + np.diag([np.inf, np.inf])
    brute = min(d.min(), min(np.linalg.norm(np.array([i, j, k]) @ lat.matrix) for i in range(-3, 4)
                             for j in range(-3, 4) for k in range(-3, 4) if (i, j, k) != (0, 0, 0)))
    assert f["min_distance"] == pytest.approx(brute, rel=1e-9)


def test_large_cells_use_the_neighbour_list_with_the_same_answer(monkeypatch):
    s = _bundled("perov_5", 3)[1] * (3, 3, 3)  # 135 atoms
    s.perturb(0.1, min_distance=0.05)
    dense = cf.distance_facts(s)
    monkeypatch.setattr(cf, "DENSE_DISTANCE_ATOMS", 10)
    sparse = cf.distance_facts(s)
    for k in ("min_distance", "min_distance_ratio"):
        assert sparse[k] == pytest.approx(dense[k], rel=1e-9)
    assert sparse["min_distance_pair"] == dense["min_distance_pair"]
    assert sparse["min_ratio_pair"] == dense["min_ratio_pair"]
    m = s.distance_matrix + np.diag(np.full(len(s), np.inf))
    assert dense["min_distance"] == pytest.approx(m.min(), rel=1e-9)


@pytest.mark.parametrize("case", ["coplanar", "overlap", "nan", "huge", "none", "heavy"])
def test_pathological_structures_answer_quickly(case):
    t0 = time.perf_counter()
    if case == "coplanar":
        s = Structure(Lattice([[3, 0, 0], [0, 3, 0], [3, 3, 0]]), ["O", "O"], [[0, 0, 0], [0.5, 0.5, 0]],
                      validate_proximity=False)
        f = crystal_facts(s)
        assert f["min_distance"] is None and "degenerate" in f["distance_error"]
        assert f["spacegroup_number"] is None and f["symmetry_error"] and f["density"] is None
    elif case == "overlap":  # two atoms on one spot: distance 0, spglib may refuse, nothing raises
        s = Structure(Lattice.cubic(4.0), ["Ti", "O", "O"], [[0, 0, 0], [0, 0, 0], [0.5, 0.5, 0.5]])
        f = crystal_facts(s)
        assert f["min_distance"] == 0.0 and f["too_close"] is True and f["min_distance_ratio"] == 0.0
    elif case == "nan":
        s = Structure(Lattice.cubic(4.0), ["Ti", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
        s._sites[1]._frac_coords = np.array([np.nan, 0.5, 0.5])
        f = crystal_facts(s)
        assert f["min_distance"] is None and "non-finite" in f["distance_error"] and f["spacegroup_number"] is None
    elif case == "huge":  # over MAX_SYMMETRY_ATOMS: no spglib, distances from the neighbour list
        s = diamond() * (5, 5, 6)  # 1,200 atoms
        f = crystal_facts(s)
        assert f["spacegroup_number"] is None and "too large" in f["symmetry_error"]
        assert f["min_distance"] == pytest.approx(3.567 * math.sqrt(3) / 4, rel=1e-6)
    elif case == "heavy":  # 30 elements incl. superheavy ones, random positions
        from pymatgen.core import Element

        rng = np.random.default_rng(0)
        species = [Element.from_Z(z).symbol for z in rng.integers(1, 110, size=30)]
        s = Structure(Lattice.from_parameters(7, 8, 30, 60, 110, 95), species, rng.random((30, 3)))
        f = crystal_facts(s)
        assert f["spacegroup_number"] == 1 and f["min_distance"] > 0
    else:
        f = crystal_facts(None)
        assert f["decoded"] is False and f["formula"] is None and set(f) == set(FACT_KEYS)
    json.dumps(f, allow_nan=False)
    assert time.perf_counter() - t0 < 20


def test_thousands_of_crystals_in_reasonable_time():
    structures = _bundled("perov_5", 300) + _bundled("carbon_24", 200)
    crystal_facts(structures[0])
    t0 = time.perf_counter()
    facts = [crystal_facts(s) for s in structures]
    per = (time.perf_counter() - t0) / len(structures)
    assert all(f["spacegroup_number"] for f in facts)
    assert per < 0.05, f"{1000 * per:.1f} ms per crystal"  # measured ~3-6 ms on one shared core


def test_facts_table_on_worker_processes_equals_in_process():
    from unimat_dist.crystal_facts import facts_table

    structures = _bundled("perov_5", 20) + [None] + _bundled("carbon_24", 20)
    flags = [{"decoded": s is not None} for s in structures]
    here = facts_table(structures, flags=flags, workers=1)
    there = facts_table(structures, flags=flags, workers=2, min_parallel=1)
    assert here == there and here[20]["decoded"] is False and here[0]["decoded"] is True
