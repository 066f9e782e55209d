"""Layout, spec, error handling, normalisation, robust decoding and augmentations of the representation."""
import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from unimat_dist.representation import (
    CELL_OF,
    Normalizer,
    UniMatBatch,
    UniMatSpec,
    count_mask,
    decode,
    decode_batch,
    element_mask,
    encode,
    encode_arrays,
    encode_batch,
    params_to_matrix,
    matrix_to_params,
    random_rotation,
    random_translation,
    shuffle_slots,
    structures_from_model,
)
from unimat_dist.representation import periodic_table as pt
from unimat_dist.representation.lattice import clip_params, volume_factor


def nacl():
    return Structure(
        Lattice.cubic(5.64),
        ["Na"] * 4 + ["Cl"] * 4,
        [[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0], [.5, .5, .5], [.5, 0, 0], [0, .5, 0], [0, 0, .5]],
    )


def triclinic():
    return Structure(
        Lattice.from_parameters(4.1, 5.3, 6.7, 71.0, 98.0, 113.0),
        ["Fe", "Fe", "O", "O", "O"],
        [[0.1, 0.2, 0.3], [0.6, 0.7, 0.8], [0.25, 0.5, 0.9], [0.9, 0.1, 0.05], [0.45, 0.35, 0.55]],
    )


# ------------------------------------------------------------------------------------------ layout
def test_every_element_up_to_og_has_one_cell():
    cells = [pt.CELL_OF_Z[z] for z in range(1, 119)]
    assert len(set(cells)) == 118
    assert all(0 <= r < 9 and 0 <= c < 18 for r, c in cells)
    assert CELL_OF["H"] == (0, 0) and CELL_OF["He"] == (0, 17) and CELL_OF["Fe"] == (3, 7)
    assert CELL_OF["O"] == (1, 15) and CELL_OF["Hf"] == (5, 3) and CELL_OF["Pu"] == (8, 7)
    # f-block rows: lanthanides in row 8 (index 7), actinides in row 9 (index 8), groups 3..17.
    assert [CELL_OF[e] for e in ("La", "Lu", "Ac", "Lr")] == [(7, 2), (7, 16), (8, 2), (8, 16)]


def test_reduced_spec_shapes():
    assert UniMatSpec(24, elements=["C"]).shape == (24, 1, 1, 3)
    s = UniMatSpec(4, elements=["O", "Fe"])
    assert (s.H, s.W) == (2, 2) and s.elements == ("O", "Fe") and s.allowed_cells.sum() == 2
    assert UniMatSpec(4, elements=["Fe", "O"]) == s  # order-insensitive equality
    full = UniMatSpec(3)
    assert (full.H, full.W) == (9, 18) and full.allowed_cells.sum() == 118
    assert UniMatSpec.from_dict(s.to_dict()) == s


def test_spec_mismatch_message():
    a, b = UniMatSpec(20), UniMatSpec(24, coords="cartesian")
    with pytest.raises(ValueError, match="max_atoms_per_element: expected 20, shards has 24.*coords"):
        a.check_compatible(b, "shards")


def test_bad_spec_values():
    with pytest.raises(ValueError, match="positive integer"):
        UniMatSpec(0)
    with pytest.raises(ValueError, match="fractional' or 'cartesian"):
        UniMatSpec(3, coords="polar")
    with pytest.raises(ValueError, match="unknown element symbol 'Xx'"):
        UniMatSpec(3, elements=["Xx"])


# ------------------------------------------------------------------------------------------ worked example
def test_nacl_worked_example():
    spec = UniMatSpec(max_atoms_per_element=4)
    t = encode(nacl(), spec)
    na, cl = CELL_OF["Na"], CELL_OF["Cl"]
    assert t.mask.sum() == 8 and t.mask[:, na[0], na[1]].all() and t.mask[:, cl[0], cl[1]].all()
    assert np.allclose(t.positions[1, na[0], na[1]], [0, .5, .5])
    assert np.allclose(t.positions[0, cl[0], cl[1]], [.5, .5, .5])
    assert np.allclose(t.lattice, [5.64, 5.64, 5.64, 90, 90, 90])
    assert t.element_mask().sum() == 2 and t.count_mask().sum() == 8
    assert decode(t, spec).composition.reduced_formula == "NaCl"


# ------------------------------------------------------------------------------------------ errors
def test_too_many_atoms_of_one_element():
    with pytest.raises(ValueError, match=r"rec7: too many atoms of one element.*L=3: Na=4, Cl=4"):
        encode(nacl(), UniMatSpec(3), record="rec7")


def test_element_outside_reduced_system():
    with pytest.raises(ValueError, match="element\\(s\\) Na outside the reduced system O,Cl"):
        encode(nacl(), UniMatSpec(4, elements=["O", "Cl"]))


def test_partial_occupancy_rejected():
    s = Structure(Lattice.cubic(4), [{"Fe": 0.5, "Co": 0.5}, "O"], [[0, 0, 0], [.5, .5, .5]])
    with pytest.raises(ValueError, match="partial occupancy/disorder at site 0"):
        encode(s, UniMatSpec(4), record="x")


def test_nan_coordinates_rejected():
    with pytest.raises(ValueError, match="non-finite .* at site 1"):
        encode_arrays([11, 17], [[0, 0, 0], [np.nan, 0.5, 0.5]], [5, 5, 5, 90, 90, 90], UniMatSpec(2))


def test_other_bad_arrays():
    spec = UniMatSpec(2)
    with pytest.raises(ValueError, match="out of the periodic table"):
        encode_arrays([0], [[0, 0, 0]], [5, 5, 5, 90, 90, 90], spec)
    with pytest.raises(ValueError, match="no atoms"):
        encode_arrays([], np.zeros((0, 3)), [5, 5, 5, 90, 90, 90], spec)
    with pytest.raises(ValueError, match="invalid lattice"):
        encode_arrays([6], [[0, 0, 0]], [5, -5, 5, 90, 90, 90], spec)
    with pytest.raises(ValueError, match="2 species but 1 coordinate rows"):
        encode_arrays([6, 6], [[0, 0, 0]], [5, 5, 5, 90, 90, 90], spec)


def test_dummy_species_rejected():
    from pymatgen.core.periodic_table import DummySpecies

    s = Structure(Lattice.cubic(4), [DummySpecies("X"), "O"], [[0, 0, 0], [.5, .5, .5]])
    with pytest.raises(ValueError, match="site 0 holds X.*not an element"):
        encode(s, UniMatSpec(4))


def test_wrapping_into_unit_cell():
    t = encode_arrays([6, 6], [[-0.25, 1.5, -1e-17], [0.5, 0.5, 2.0]], [3, 3, 3, 90, 90, 90], UniMatSpec(2))
    pos = t.positions[t.mask]
    assert ((pos >= 0) & (pos < 1)).all()
    assert np.allclose(pos[0], [0.75, 0.5, 0.0])


def test_composition_masks():
    spec = UniMatSpec(4)
    cm = count_mask("Fe2O3", spec)
    fe, o = CELL_OF["Fe"], CELL_OF["O"]
    assert cm.shape == (4, 9, 18) and cm.sum() == 5
    assert cm[:2, fe[0], fe[1]].all() and not cm[2:, fe[0], fe[1]].any() and cm[:3, o[0], o[1]].all()
    assert (element_mask({"Fe": 2, "O": 3}, spec) == cm.max(0)).all()
    for bad, msg in [("Fe5O3", "exceed"), ({"Fe": 1.5}, "whole numbers"), ("", "empty"), ({"Qq": 1}, "unknown element")]:
        with pytest.raises(ValueError, match=msg):
            count_mask(bad, spec)
    with pytest.raises(ValueError, match="outside this model's chemical system"):
        element_mask("Fe2O3", UniMatSpec(4, elements=["C"]))


# ------------------------------------------------------------------------------------------ batches
def test_batch_encode_decode():
    spec = UniMatSpec(4)
    batch = encode_batch([nacl(), triclinic()], spec)
    assert batch.positions.shape == (2, 4, 9, 18, 3) and batch.lattice.shape == (2, 6) and len(batch) == 2
    out = decode_batch(batch, spec)
    assert [s.composition.reduced_formula for s in out] == ["NaCl", "Fe2O3"]


def test_lattice_params_matrix_roundtrip_numpy_and_torch():
    rng = np.random.default_rng(0)
    params = np.concatenate([rng.uniform(2, 20, (64, 3)), rng.uniform(60, 120, (64, 3))], 1)
    params = params[volume_factor(params) > 0.05]
    m = params_to_matrix(params)
    for i in range(5):
        assert np.allclose(m[i], Lattice.from_parameters(*params[i]).matrix, atol=1e-9)
    assert np.allclose(matrix_to_params(m), params, atol=1e-8)
    mt = params_to_matrix(torch.tensor(params))
    assert torch.allclose(mt, torch.tensor(m), atol=1e-9)


# ------------------------------------------------------------------------------------------ normalisation
def test_normalizer_roundtrip_and_null_distinguishable():
    spec = UniMatSpec(4)
    batch = encode_batch([nacl(), triclinic()], spec)
    norm = Normalizer.fit(batch.lattice, spec)
    x = norm.positions_to_model(batch.positions, batch.mask)
    assert x[batch.mask].min() >= 0 and (x[~batch.mask] == -1).all()
    y = norm.lattice_to_model(batch.lattice)
    pos, mask = norm.positions_from_model(x)
    assert (mask == batch.mask).all() and np.allclose(pos, batch.positions)
    assert np.allclose(norm.lattice_from_model(y), batch.lattice)
    assert Normalizer.from_dict(norm.to_dict()) == norm
    # torch path gives the same numbers
    xt = norm.positions_to_model(torch.tensor(batch.positions), torch.tensor(batch.mask))
    assert torch.allclose(xt, torch.tensor(x))
    assert torch.allclose(norm.lattice_from_model(torch.tensor(y)), torch.tensor(batch.lattice))


def test_robust_decoding_of_noisy_model_output():
    spec = UniMatSpec(4)
    batch = encode_batch([nacl(), triclinic()], spec)
    norm = Normalizer.fit(batch.lattice, spec)
    rng = np.random.default_rng(1)
    x = norm.positions_to_model(batch.positions, batch.mask) + rng.normal(0, 0.1, batch.positions.shape)
    y = norm.lattice_to_model(batch.lattice) + rng.normal(0, 0.01, batch.lattice.shape)
    out = structures_from_model(x, y, spec, norm)
    assert [s.composition.reduced_formula for s in out] == ["NaCl", "Fe2O3"]
    for s in out:
        assert ((s.frac_coords >= 0) & (s.frac_coords < 1)).all()
    # Garbage lattice predictions are clipped into a buildable cell; all-null crystals decode to None.
    garbage = np.array([[40.0, -40.0, 0.0, 30.0, -30.0, 9.0], [0, 0, 0, 0, 0, 0]])
    x2 = x.copy()
    x2[1] = -1.0
    out = structures_from_model(x2, garbage, spec, norm)
    assert out[1] is None
    p = out[0].lattice.parameters
    assert 1.0 <= min(p[:3]) and max(p[:3]) <= 100.0 and out[0].volume > 0


def test_atoms_in_cells_without_element_are_dropped():
    spec = UniMatSpec(2, elements=["Fe", "O"])  # 2 x 2 grid, two cells hold no element of the system
    x = np.full((1, *spec.shape), -1.0)
    empty = np.argwhere(~spec.allowed_cells)[0]
    x[0, 0, empty[0], empty[1]] = 0.5
    fe = np.argwhere(spec.z_at_cell == 26)[0]
    x[0, 0, fe[0], fe[1]] = 0.25
    out = structures_from_model(x, np.zeros((1, 6)), spec, Normalizer.default(spec))
    assert out[0].composition.formula == "Fe1"


def test_clip_params_repairs_impossible_angles():
    bad = np.array([[5, 5, 5, 150, 150, 150.0], [5, 5, 5, 30, 30, 100.0]])
    fixed = clip_params(bad)
    assert (volume_factor(fixed) >= 0.05 - 1e-6).all()
    good = np.array([[5, 6, 7, 80, 95, 100.0]])
    assert np.allclose(clip_params(good), good)


# ------------------------------------------------------------------------------------------ augmentations
def _sorted_sites(s):
    return sorted((site.specie.symbol, *(np.round(site.frac_coords, 6) % 1.0)) for site in s)


@pytest.mark.parametrize("mode", ["atoms", "all"])
def test_shuffle_slots_keeps_the_crystal(mode):
    spec = UniMatSpec(5)
    b = encode_batch([nacl(), triclinic()], spec)
    for backend in ("numpy", "torch"):
        if backend == "torch":
            pos, mask = shuffle_slots(torch.tensor(b.positions), torch.tensor(b.mask), torch.Generator().manual_seed(0), mode)
            pos, mask = pos.numpy(), mask.numpy()
        else:
            pos, mask = shuffle_slots(b.positions, b.mask, np.random.default_rng(0), mode)
        if mode == "atoms":  # atoms stay packed in the first slots
            assert (mask.sum(1) == b.mask.sum(1)).all()
            assert (np.diff(mask.astype(int), axis=1) <= 0).all()
        out = decode_batch(UniMatBatch(pos, mask, b.lattice), spec)
        assert [_sorted_sites(s) for s in out] == [_sorted_sites(nacl()), _sorted_sites(triclinic())]


def test_translation_keeps_distances():
    spec = UniMatSpec(4)
    b = encode_batch([triclinic()], spec)
    pos, mask = random_translation(b.positions, b.mask, np.random.default_rng(3))
    s = decode_batch(UniMatBatch(pos, mask, b.lattice), spec)[0]
    d0 = decode_batch(b, spec)[0].distance_matrix
    assert np.allclose(np.sort(s.distance_matrix.ravel()), np.sort(d0.ravel()), atol=1e-8)
    assert (pos[~mask] == -1).all()


def test_rotation_cartesian_keeps_fractional_coordinates():
    spec = UniMatSpec(4, coords="cartesian")
    b = encode_batch([triclinic(), nacl()], spec)
    pos, mask, lat = random_rotation(b.positions, b.mask, b.lattice, np.random.default_rng(5))
    assert not np.allclose(pos[mask], b.positions[b.mask])
    assert (pos[~mask] == -1).all()
    rotated = decode_batch(UniMatBatch(pos, mask, lat), spec)
    assert [_sorted_sites(s) for s in rotated] == [_sorted_sites(triclinic()), _sorted_sites(nacl())]
    post, _, latt = random_rotation(torch.tensor(b.positions), torch.tensor(b.mask), torch.tensor(b.lattice))
    assert torch.allclose(torch.linalg.det(latt.reshape(-1, 3, 3)), torch.tensor(np.linalg.det(b.lattice.reshape(-1, 3, 3))))
