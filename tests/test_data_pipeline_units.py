"""Data pipeline building blocks without Ray: fast CIF reader vs pymatgen, CSV row index, splits,
validation/quarantine reasons, the sample and tar byte formats, and the structure-folder reader."""
from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import tarfile
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.csv_index import index_csv
from data_pipeline.fast_cif import NotFastPath, parse_p1_cif
from data_pipeline.quarantine import REASONS, Rejected
from data_pipeline.splits import check_fractions, formulas, split_of
from data_pipeline.structure_parse import record_arrays
from data_pipeline.records import RawRecord
from data_pipeline.validate import validate_arrays
from unimat_dist.shards.sample_format import pack_sample, unpack_sample
from unimat_dist.shards.tar_shards import ShardWriter, iter_tar_samples
from unimat_dist.datasets import iter_cdvae_csv, structure_from_cif
from unimat_dist.representation import UniMatSpec, encode_arrays, structure_arrays

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = sorted((ROOT / "data").glob("*/*.csv.gz"))


# ------------------------------------------------------------------------------------------ fast CIF
def test_fast_cif_matches_pymatgen_on_bundled_structures():
    spec = UniMatSpec(max_atoms_per_element=24)
    n = 0
    for path in BUNDLED:
        rows = list(itertools.islice(iter_cdvae_csv(path), 0, 4000, 67))  # spread over each file
        for rec in rows:
            fast = encode_arrays(*parse_p1_cif(rec.cif), spec)
            slow = encode_arrays(*structure_arrays(structure_from_cif(rec.cif)), spec)
            assert np.array_equal(fast.mask, slow.mask), rec.id
            assert np.array_equal(fast.positions, slow.positions), rec.id  # bit-identical coordinates
            np.testing.assert_allclose(fast.lattice, slow.lattice, rtol=1e-12, atol=1e-10, err_msg=rec.id)
            n += 1
    assert n > 150


def _cif(rows: str, ops: str = "  1  'x, y, z'", cell: str = "4.0 4.0 4.0 90 90 90") -> str:
    a, b, c, al, be, ga = cell.split()
    return f"""data_test
_cell_length_a {a}
_cell_length_b {b}
_cell_length_c {c}
_cell_angle_alpha {al}
_cell_angle_beta {be}
_cell_angle_gamma {ga}
loop_
 _symmetry_equiv_pos_site_id
 _symmetry_equiv_pos_as_xyz
{ops}
loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
{rows}
"""


def test_fast_cif_rejects_and_defers():
    ok = _cif("  Na  Na0  0.0  0.0  0.0  1\n  Cl  Cl1  0.5  0.5  0.5  1.0")
    z, frac, params = parse_p1_cif(ok)
    assert z.tolist() == [11, 17] and params.tolist() == [4.0, 4.0, 4.0, 90.0, 90.0, 90.0]
    assert parse_p1_cif(_cif("  Fe2+  Fe0  0.1  0.2  0.3  1"))[0].tolist() == [26]  # oxidation-state symbol
    with pytest.raises(Rejected) as e:
        parse_p1_cif(_cif("  Fe  Fe0  0.0  0.0  0.0  0.5\n  Ni  Ni0  0.0  0.0  0.0  0.5"))
    assert e.value.reason == "disordered"
    with pytest.raises(Rejected) as e:
        parse_p1_cif(_cif("  Xx  Xx0  0.0  0.0  0.0  1"))
    assert e.value.reason == "unknown_element" and "'Xx'" in e.value.message
    with pytest.raises(Rejected) as e:
        parse_p1_cif(_cif("  Na  Na0  0.0  0.0  0.0  1\n  Na  Na1  0.00001  0.0  1.0  1"))
    assert e.value.reason == "overlapping_atoms"
    with pytest.raises(Rejected) as e:
        parse_p1_cif(_cif("  Na  Na0  0.0  0.0  0.0  1\n  Cl  Cl1  0.5  0.5"))
    assert e.value.reason == "parse_error"
    # features left to pymatgen: symmetry expansion, uncertainties
    with pytest.raises(NotFastPath):
        parse_p1_cif(_cif("  Na  Na0  0.0  0.0  0.0  1", ops="  1  'x, y, z'\n  2  '-x, -y, -z'"))
    with pytest.raises(NotFastPath):
        parse_p1_cif(_cif("  Na  Na0  0.1(2)  0.0  0.0  1"))


def test_symmetric_cif_falls_back_to_pymatgen_and_expands():
    cif = _cif("  Na  Na0  0.1  0.2  0.3  1", ops="  1  'x, y, z'\n  2  '-x, -y, -z'")
    (z, frac, params), parser = record_arrays(RawRecord("sym", "t", "cif", text=cif))
    assert parser == "pymatgen" and z.tolist() == [11, 11]
    np.testing.assert_allclose(sorted(frac[:, 0]), [0.1, 0.9])


# ------------------------------------------------------------------------------------------ CSV index
@pytest.mark.parametrize("rows_per_unit", [1, 7, 100])
def test_csv_index_ranges_cover_every_row_once(rows_per_unit):
    data = gzip.open(ROOT / "data/mp_20_subset/val.csv.gz").read()
    ref = list(csv.reader(io.StringIO(data.decode(), newline="")))
    idx = index_csv(io.BytesIO(data), rows_per_unit)
    got = []
    for u in range(idx.units):
        chunk = idx.header + data[idx.unit_offsets[u] : idx.unit_offsets[u + 1]]
        got += [r for r in csv.reader(io.StringIO(chunk.decode(), newline="")) if r][1:]
    assert idx.rows == len(ref) - 1 and got == ref[1:]
    assert list(idx.unit_rows) == list(range(0, idx.rows, rows_per_unit))


@pytest.mark.parametrize(
    "text",
    [b'a,b\n1,"x\ny"\n\n2,"q""\n"\r\n3,z', b"a,b\r\n1,2\r\n\r\n3,4\r\n", b"\n\na,b\n1,2\n\n", b'a,b\n1,"""\n,"\n'],
)
def test_csv_index_quoted_newlines_blank_lines_crlf(text):
    ref = [r for r in csv.reader(io.StringIO(text.decode(), newline="")) if r][1:]
    idx = index_csv(io.BytesIO(text), 1)
    assert idx.rows == len(ref)
    for u in range(idx.units):
        chunk = idx.header + text[idx.unit_offsets[u] : idx.unit_offsets[u + 1]]
        assert [r for r in csv.reader(io.StringIO(chunk.decode(), newline="")) if r][1:] == [ref[u]]
    assert index_csv(io.BytesIO(text), 1, limit=1).rows == min(1, len(ref))


# ------------------------------------------------------------------------------------------ splits
def test_split_depends_on_reduced_composition_only():
    fr = {"train": 0.8, "val": 0.1, "test": 0.1}
    assert formulas(np.array([26, 26, 8, 8, 8])) == ("Fe2O3", "Fe2O3")
    assert formulas(np.array([26] * 4 + [8] * 6)) == ("Fe4O6", "Fe2O3")
    assert formulas(np.array([8, 26, 8, 26, 8])) == ("Fe2O3", "Fe2O3")  # order-free
    assert split_of("Fe2O3", fr) == split_of(formulas(np.array([26] * 4 + [8] * 6))[1], fr)
    names = [f"Li{i}O{j}" for i in range(1, 60) for j in range(1, 60)]
    got = [split_of(n, fr) for n in names]
    assert got == [split_of(n, fr) for n in names]  # deterministic
    share = {s: got.count(s) / len(got) for s in fr}
    assert all(abs(share[s] - fr[s]) < 0.02 for s in fr), share
    assert split_of("Fe2O3", fr, salt="other") in fr  # the salt re-deals compositions
    with pytest.raises(ValueError, match="sum to 1"):
        check_fractions({"train": 0.5, "val": 0.1})
    with pytest.raises(ValueError, match="unknown split"):
        check_fractions({"train": 0.9, "dev": 0.1})


# ------------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "z,frac,params,reason",
    [
        ([], np.zeros((0, 3)), [4, 4, 4, 90, 90, 90], "empty_structure"),
        ([11], [[0, 0, 0]], [4, 4, -4, 90, 90, 90], "invalid_lattice"),
        ([11], [[0, 0, 0]], [4, 4, 4, 150, 150, 150], "invalid_lattice"),
        ([11], [[0, np.nan, 0]], [4, 4, 4, 90, 90, 90], "invalid_coordinates"),
        ([11, 11], [[0, 0, 0], [0.05, 0, 0]], [4, 4, 4, 90, 90, 90], "overlapping_atoms"),
        ([11], [[0, 0, 0]], [0.3, 4, 4, 90, 90, 90], "overlapping_atoms"),  # an atom and its own image
        ([11] * 3, [[0, 0, 0], [0.3, 0, 0], [0.6, 0, 0]], [9, 9, 9, 90, 90, 90], "too_many_atoms_per_element"),
        ([6, 8], [[0, 0, 0], [0.5, 0.5, 0.5]], [4, 4, 4, 90, 90, 90], "element_outside_spec"),
        ([0], [[0, 0, 0]], [4, 4, 4, 90, 90, 90], "unknown_element"),
    ],
)
def test_validation_reasons(z, frac, params, reason):
    spec = UniMatSpec(2) if reason != "element_outside_spec" else UniMatSpec(2, elements=("C",))
    with pytest.raises(Rejected) as e:
        validate_arrays(np.asarray(z, dtype=np.int64), np.asarray(frac, float).reshape(-1, 3), np.asarray(params, float), spec)
    assert e.value.reason == reason and reason in REASONS


def test_validation_accepts_real_structures():
    spec = UniMatSpec(20)
    for rec in itertools.islice(iter_cdvae_csv(ROOT / "data/mp_20_subset/train.csv.gz"), 200):
        validate_arrays(*parse_p1_cif(rec.cif), spec)


# ------------------------------------------------------------------------------------------ bytes
def test_sample_and_tar_bytes_are_standard_and_deterministic(tmp_path):
    import webdataset as wds

    spec = UniMatSpec(20)
    recs = list(itertools.islice(iter_cdvae_csv(ROOT / "data/mp_20_subset/test.csv.gz"), 12))
    paths = []
    for run in range(2):
        w = ShardWriter(str(tmp_path / f"s{run}.tar"))
        for k, rec in enumerate(recs):
            t = encode_arrays(*parse_p1_cif(rec.cif), spec)
            w.write(f"u000000-{k:07d}", pack_sample(t.positions, t.mask, t.lattice, {"id": rec.id, "properties": rec.properties}))
        info = w.close()
        paths.append(tmp_path / f"s{run}.tar")
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert info["samples"] == 12 and info["bytes"] % 10240 == 0
    # the tar is a standard archive ...
    with tarfile.open(paths[0]) as tf:
        assert len(tf.getnames()) == 24 and tf.getnames()[:2] == ["u000000-0000000.unimat.npz", "u000000-0000000.meta.json"]
    # ... that webdataset reads and decodes with its default decoders
    got = list(wds.WebDataset(str(paths[0]), shardshuffle=False).decode())
    assert [s["meta.json"]["id"] for s in got] == [r.id for r in recs]
    t0 = encode_arrays(*parse_p1_cif(recs[0].cif), spec)
    assert np.array_equal(got[0]["unimat.npz"]["mask"], t0.mask)
    np.testing.assert_array_equal(got[0]["unimat.npz"]["positions"], t0.positions.astype(np.float32))
    assert got[0]["unimat.npz"]["composition"].sum() == t0.mask.sum()
    # and our own reader gives the same samples
    with open(paths[0], "rb") as fh:
        ours = [unpack_sample(m) for _, m in iter_tar_samples(fh)]
    assert [s["meta"]["id"] for s in ours] == [r.id for r in recs]
    assert ours[0]["lattice"].dtype == np.float64 and np.array_equal(ours[0]["lattice"], t0.lattice)


# ------------------------------------------------------------------------------------------ structure folders
def _structure_folder(root: Path) -> dict[str, str]:
    """A folder with every supported file kind plus bad files; returns {record id: expected outcome}."""
    import ase.io
    from ase import Atoms
    from ase.build import bulk
    from ase.calculators.singlepoint import SinglePointCalculator
    from pymatgen.io.vasp import Poscar

    recs = list(itertools.islice(iter_cdvae_csv(ROOT / "data/mp_20_subset/val.csv.gz"), 4))
    root.mkdir(parents=True)
    (root / "a.cif").write_text(recs[0].cif)
    (root / "multi.cif").write_text(recs[1].cif + "\n" + recs[2].cif)
    (root / "sub").mkdir()
    (root / "sub" / "POSCAR").write_text(Poscar(structure_from_cif(recs[3].cif)).get_str())
    (root / "sub" / "zipped.cif.gz").write_bytes(gzip.compress(recs[0].cif.encode()))
    cu = bulk("Cu", "fcc", a=3.6)
    cu.calc = SinglePointCalculator(cu, energy=-3.5)
    mol = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
    ase.io.write(root / "frames.extxyz", [cu, bulk("NaCl", "rocksalt", a=5.6), mol], format="extxyz")
    ase.io.write(root / "run.traj", [bulk("Si", "diamond", a=5.43), bulk("Al", "fcc", a=4.05)], format="traj")
    (root / "broken.cif").write_text("data_x\n_cell_length_a 4\nloop_\n _atom_site_type_symbol\n")
    (root / "README.txt").write_text("notes")
    (root / ".hidden.cif").write_text("ignored")
    return {
        "a.cif": "ok", "multi.cif#0": "ok", "multi.cif#1": "ok", "sub/POSCAR": "ok", "sub/zipped.cif.gz": "ok",
        "frames.extxyz#0": "ok", "frames.extxyz#1": "ok", "frames.extxyz#2": "not_periodic",
        "run.traj#0": "ok", "run.traj#1": "ok", "broken.cif": "parse_error", "README.txt": "unsupported_file",
    }


@pytest.mark.parametrize("as_zip", [False, True])
def test_structure_dir_reader_and_local_ingest(tmp_path, as_zip):
    from data_pipeline.config import IngestConfig
    from data_pipeline.job import run_ingest
    from unimat_dist.shards import iter_samples, read_manifest

    expected = _structure_folder(tmp_path / "structs")
    src = tmp_path / "structs"
    if as_zip:
        src = tmp_path / "structs.zip"
        with zipfile.ZipFile(src, "w") as zf:
            for p in sorted((tmp_path / "structs").rglob("*")):
                if p.is_file():
                    zf.write(p, p.relative_to(tmp_path / "structs").as_posix())
    cfg = IngestConfig()
    cfg.source.format, cfg.source.uri = "structure-dir", str(src)
    cfg.output.uri, cfg.output.records_per_unit = str(tmp_path / "out"), 4
    cfg.spec.max_atoms_per_element = 20
    cfg.run.executor = "local"
    summary = run_ingest(cfg)
    ok = {k for k, v in expected.items() if v == "ok"}
    assert summary.read == len(expected) and summary.written == len(ok)
    assert summary.quarantined_by_reason == {"not_periodic": 1, "parse_error": 1, "unsupported_file": 1}
    samples = list(iter_samples(read_manifest(str(tmp_path / "out"))))
    assert {s["meta"]["id"] for s in samples} == ok
    cu = next(s for s in samples if s["meta"]["id"] == "frames.extxyz#0")
    assert cu["meta"]["properties"]["energy"] == -3.5 and cu["meta"]["formula"] == "Cu"
    lines = [json.loads(ln) for p in sorted((tmp_path / "out" / "quarantine").glob("*.jsonl")) for ln in p.read_text().splitlines()]
    assert {(q["id"], q["reason"]) for q in lines} == {(k, v) for k, v in expected.items() if v != "ok"}
    assert all(q["message"] and q["source"] for q in lines)


# ------------------------------------------------------------------------------------------ zip index
def test_zip_index_reads_zip64_archives_and_detects_corruption(tmp_path):
    from data_pipeline.zip_index import ZipIndex

    path = tmp_path / "big.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:  # > 65,535 members: a zip64 archive
        for i in range(66000):
            zf.writestr(f"by_id/{i:010x}.CIF", f"data_{i}\n")
        zf.writestr("raw.txt", b"stored", compress_type=zipfile.ZIP_STORED)
    with open(path, "rb") as fh:
        idx = ZipIndex.build(fh)
        assert len(idx) == 66001 and idx.nbytes / len(idx) < 32
        for i in (0, 65535, 65999):
            assert idx.read(fh, f"by_id/{i:010x}.CIF") == f"data_{i}\n".encode()
        assert idx.read(fh, "raw.txt") == b"stored" and idx.read(fh, "by_id/missing.CIF") is None
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("raw.txt")
    data[info.header_offset + 30 + len("raw.txt")] ^= 0x01  # flip a bit of the stored member
    (tmp_path / "bad.zip").write_bytes(bytes(data))
    with open(tmp_path / "bad.zip", "rb") as fh:
        with pytest.raises(ValueError, match="CRC mismatch"):
            ZipIndex.build(fh).read(fh, "raw.txt")


def test_disk_zip_index_matches_zipfile_is_shared_per_node_and_refuses_lying_counts(tmp_path):
    """The ingest job's index (zip_disk_index): every member of a zip64 archive read back equal to
    ``zipfile``'s, built once (a second opener reuses the file), a member count the central directory cannot
    hold refused before anything is sized by it."""
    import struct as st
    from concurrent.futures import ThreadPoolExecutor

    from data_pipeline.zip_disk_index import DiskZipIndex, index_path, node_index

    path = tmp_path / "big.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:  # > 65,535 members: zip64, several chunks
        for i in range(70000):
            zf.writestr(f"by_id/{i:010x}.CIF", f"data_{i}\n" * (i % 7 + 1))
        zf.writestr("raw.txt", b"stored", compress_type=zipfile.ZIP_STORED)
    scratch = tmp_path / "scratch"
    with open(path, "rb") as fh, ThreadPoolExecutor(4) as pool:
        idxs = list(pool.map(lambda _: node_index(str(path), open(path, "rb"), str(scratch)), range(4)))
        assert len({os.stat(i.path).st_ino for i in idxs}) == 1 and len(idxs[0]) == 70001
        assert os.path.getsize(index_path(str(path), str(scratch))) < 70001 * 32 + 64 + 8 * (idxs[0].buckets + 1) + 1
        rng = np.random.default_rng(0)
        for i in [0, 65535, 69999, *rng.integers(0, 70000, 300).tolist()]:
            assert idxs[1].read(fh, f"by_id/{i:010x}.CIF") == (f"data_{i}\n" * (i % 7 + 1)).encode()
        assert idxs[2].read(fh, "raw.txt") == b"stored" and idxs[3].read(fh, "by_id/missing.CIF") is None
    # an end-of-central-directory record that claims 10^9 members
    data = bytearray(path.read_bytes())
    eocd = data.rfind(b"PK\x06\x06")  # zip64 EOCD: members at offset 24 and 32
    st.pack_into("<QQ", data, eocd + 24, 10**9, 10**9)
    (tmp_path / "lying.zip").write_bytes(bytes(data))
    with open(tmp_path / "lying.zip", "rb") as fh:
        with pytest.raises(ValueError, match="corrupt zip"):
            DiskZipIndex.write(fh, str(tmp_path / "lying.uzi"))
    assert not (tmp_path / "lying.uzi").exists()
