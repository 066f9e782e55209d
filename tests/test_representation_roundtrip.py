"""decode(encode(s)) reproduces every structure of every bundled split (not a sample)."""
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from unimat_dist.datasets import get_info, iter_cdvae_csv, structure_from_cif
from unimat_dist.datasets.registry import bundled_path
from unimat_dist.representation import UniMatSpec, decode, encode, structure_arrays
from unimat_dist.representation import periodic_table as pt

SPLITS = [
    ("perov_5", "val"), ("perov_5", "test"),
    ("carbon_24", "val"), ("carbon_24", "test"),
    ("mp_20_subset", "train"), ("mp_20_subset", "val"), ("mp_20_subset", "test"),
]


def _parse(chunk):
    return [structure_from_cif(cif, rid) for rid, cif in chunk]


def _load(name, split):
    recs = [(r.id, r.cif) for r in iter_cdvae_csv(bundled_path(name, split))]
    chunks = [recs[i : i + 400] for i in range(0, len(recs), 400)]
    with ProcessPoolExecutor(2) as pool:
        return [s for part in pool.map(_parse, chunks) for s in part]


@pytest.fixture(scope="module", params=SPLITS, ids=[f"{n}/{s}" for n, s in SPLITS])
def split_structures(request):
    name, split = request.param
    structures = _load(name, split)
    assert len(structures) == get_info(name).official_sizes[split] or name == "mp_20_subset"
    return name, structures


def _expected_order(z, W):
    """decode emits sites grouped by cell in (row, column) order, atoms of a cell in input order."""
    cell = pt.ROW_OF_Z[z] * W + pt.COL_OF_Z[z]
    return np.argsort(cell, kind="stable")


def _assert_same(original, decoded, rid):
    z0, f0, p0 = structure_arrays(original)
    z1, f1, p1 = structure_arrays(decoded)
    assert len(z0) == len(z1), rid
    order = _expected_order(z0, 18)
    assert (z0[order] == z1).all(), f"{rid}: species differ"
    d = f0[order] - f1
    d -= np.round(d)  # compare modulo 1
    assert np.abs(d).max() < 1e-6, f"{rid}: fractional coordinates differ by {np.abs(d).max()}"
    assert np.abs(p0[:3] - p1[:3]).max() < 1e-6, f"{rid}: lattice lengths differ"
    assert np.abs(p0[3:] - p1[3:]).max() < 1e-6, f"{rid}: lattice angles differ"


def test_roundtrip_every_structure_fractional(split_structures):
    name, structures = split_structures
    spec = UniMatSpec(get_info(name).max_atoms_per_element)
    for i, s in enumerate(structures):
        t = encode(s, spec, record=f"{name}#{i}")
        assert t.positions.shape == spec.shape and t.lattice.shape == (6,)
        assert t.num_atoms == len(s)
        assert (t.positions[~t.mask] == -1).all()
        _assert_same(s, decode(t, spec), f"{name}#{i}")


def test_roundtrip_every_structure_reduced_system(split_structures):
    name, structures = split_structures
    elements = sorted({el.symbol for s in structures for el in s.composition})
    spec = UniMatSpec(get_info(name).max_atoms_per_element, elements=elements)
    if name == "carbon_24":
        assert (spec.H, spec.W) == (1, 1)
    for i, s in enumerate(structures):
        _assert_same(s, decode(encode(s, spec), spec), f"{name}#{i}")


def test_roundtrip_every_structure_cartesian(split_structures):
    name, structures = split_structures
    spec = UniMatSpec(get_info(name).max_atoms_per_element, coords="cartesian")
    for i, s in enumerate(structures):
        t = encode(s, spec)
        assert t.lattice.shape == (9,)
        back = decode(t, spec)
        _assert_same(s, back, f"{name}#{i}")
        # Cartesian positions are the fractional ones in the canonical frame of the same cell.
        m = t.lattice.reshape(3, 3)
        cart = t.positions.transpose(1, 2, 0, 3)[t.mask.transpose(1, 2, 0)]  # decode's (h, w, l) site order
        d = cart @ np.linalg.inv(m) - back.frac_coords
        assert np.abs(d - np.round(d)).max() < 1e-6
