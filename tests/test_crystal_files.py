"""A run's crystal files read back by pymatgen and ASE: P1 CIF, symmetrised CIF, POSCAR, the multi-frame
extxyz with the facts in atoms.info, and the summary.csv table; and `unimat sample` writing all of them."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from ase.io import read as ase_read
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from unimat_dist.crystal_facts import FACT_KEYS, crystal_facts
from unimat_dist.crystal_files import (TABLE_KEYS, facts_from_info, read_table_csv, sample_name,
                                       write_crystal_files)
from unimat_dist.datasets.registry import bundled_path
from unimat_dist.evaluation.structures_io import load_structures

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "checkpoints" / "perov5_transformer_cpu.pt"


def _same_crystal(a: Structure, b: Structure) -> None:
    assert [s.specie.symbol for s in a] == [s.specie.symbol for s in b]
    # lattice parameters, not the matrix: a CIF stores a, b, c, alpha, beta, gamma (its own orientation)
    assert np.allclose(a.lattice.parameters, b.lattice.parameters, atol=1e-4)
    d = (a.frac_coords - b.frac_coords + 0.5) % 1.0 - 0.5  # CIF wraps coordinates into [0, 1)
    assert np.abs(d).max() < 1e-5


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    structures = [r.structure for r in load_structures(bundled_path("perov_5", "test"), limit=5)]
    structures += [r.structure for r in load_structures(bundled_path("carbon_24", "test"), limit=4)]
    structures.insert(3, None)  # a sample that did not decode
    facts = [crystal_facts(s, energies={"e_hull": 0.1 * i} if s is not None else None)
             for i, s in enumerate(structures)]
    out = tmp_path_factory.mktemp("run")
    files, rows = write_crystal_files(out, structures, facts)
    return out, structures, facts, files, rows


def test_layout_and_table(run):
    out, structures, facts, files, rows = run
    decoded = [i for i, s in enumerate(structures) if s is not None]
    assert sorted(p.name for p in (out / "cif").iterdir()) == [f"{sample_name(i)}.cif" for i in decoded]
    assert sorted(p.name for p in (out / "poscar").iterdir()) == [f"{sample_name(i)}.vasp" for i in decoded]
    sym = [i for i in decoded if facts[i]["spacegroup_number"] > 1]
    assert sym and sorted(p.name for p in (out / "cif_sym").iterdir()) == [f"{sample_name(i)}.cif" for i in sym]
    assert not list(out.rglob(".tmp-*"))
    assert set(files) == {*(out / "cif").iterdir(), *(out / "poscar").iterdir(), *(out / "cif_sym").iterdir(),
                          out / "samples.extxyz", out / "summary.csv"}
    assert [r["index"] for r in rows] == list(range(len(structures)))
    assert rows[3]["decoded"] is False and rows[3]["cif"] is None and rows[3]["extxyz_frame"] is None
    table = read_table_csv(out / "summary.csv")
    assert list(table[0]) == list(TABLE_KEYS) and len(table) == len(structures)
    for r, t in zip(rows, table):
        assert t["name"] == r["name"] and t["formula"] == (r["formula"] or "")
        assert t["spacegroup_symbol"] == (r["spacegroup_symbol"] or "")
        assert t["cif"] == (r["cif"] or "") and t["elements"] == " ".join(r["elements"] or [])
        if r["density"] is not None:
            assert float(t["density"]) == r["density"]  # full precision
    json.dumps(rows, allow_nan=False)


def test_p1_cif_and_poscar_round_trip_in_pymatgen_and_ase(run):
    out, structures, _, _, rows = run
    for s, r in zip(structures, rows):
        if s is None:
            continue
        for rel in (r["cif"], r["poscar"]):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _same_crystal(s, Structure.from_file(out / rel))
                _same_crystal(s, AseAtomsAdaptor.get_structure(ase_read(out / rel)))


def test_symmetrised_cif_keeps_the_crystal_and_its_group(run):
    out, structures, facts, _, rows = run
    for s, f, r in zip(structures, facts, rows):
        if s is None or r["cif_sym"] is None:
            continue
        text = (out / r["cif_sym"]).read_text()
        assert "_symmetry_space_group_name_H-M" in text and f["spacegroup_symbol"].replace(" ", "") in \
            text.replace(" ", "").replace("'", "")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            readers = [Structure.from_file(out / r["cif_sym"]),
                       AseAtomsAdaptor.get_structure(ase_read(out / r["cif_sym"]))]
        for back in readers:
            assert back.composition.reduced_formula == f["formula"]
            assert back.density == pytest.approx(f["density"], rel=1e-3)
            assert SpacegroupAnalyzer(back, symprec=0.1).get_space_group_number() == f["spacegroup_number"]


def test_extxyz_frames_carry_the_facts(run):
    out, structures, facts, _, rows = run
    frames = ase_read(out / "samples.extxyz", index=":")
    decoded = [(s, f, r) for s, f, r in zip(structures, facts, rows) if s is not None]
    assert len(frames) == len(decoded)
    for k, (atoms, (s, f, r)) in enumerate(zip(frames, decoded)):
        assert r["extxyz_frame"] == k
        _same_crystal(s, AseAtomsAdaptor.get_structure(atoms))
        info = facts_from_info(atoms.info)
        assert info["index"] == r["index"] and info["name"] == r["name"]
        for key in FACT_KEYS:
            if isinstance(f[key], float):
                assert info[key] == pytest.approx(f[key], rel=1e-12), key
            else:
                assert info[key] == f[key], key
    # pymatgen reads the same file (through its ASE adaptor) frame by frame
    from pymatgen.io.ase import AseAtomsAdaptor as A

    assert A.get_structure(ase_read(out / "samples.extxyz", index=0)).composition == decoded[0][0].composition


@pytest.mark.skipif(not CKPT.exists(), reason="released checkpoint not present")
def test_unimat_sample_writes_every_format_and_the_table(tmp_path):
    from unimat_dist.cli import main

    out = tmp_path / "samples"
    assert main(["sample", "--checkpoint", str(CKPT), "--num", "4", "--steps", "20", "--composition", "SrTiO3",
                 "--threads", "1", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["crystals"]
    assert len(rows) == 4 and summary["files"] == {"table": "summary.csv", "extxyz": "samples.extxyz"}
    assert [list(r)[:len(TABLE_KEYS)] for r in rows] == [list(TABLE_KEYS)] * 4
    assert all(r["matches_request"] is True and r["formula"] == "SrTiO3" for r in rows if r["decoded"])
    table = read_table_csv(out / "summary.csv")
    assert [t["formula"] for t in table] == [r["formula"] or "" for r in rows]
    assert [t["spacegroup_number"] for t in table] == [str(r["spacegroup_number"] or "") for r in rows]
    frames = ase_read(out / "samples.extxyz", index=":")
    assert len(frames) == summary["num_decoded"]
    for atoms in frames:
        r = rows[atoms.info["index"]]
        assert facts_from_info(atoms.info)["spacegroup_symbol"] == r["spacegroup_symbol"]
        for rel in (r["cif"], r["poscar"]) + ((r["cif_sym"],) if r["cif_sym"] else ()):
            assert (out / rel).is_file() and str(out / rel) in summary["output"]
    # the run's gallery: one card per decoded crystal
    assert summary["gallery"] == "gallery/index.html" and (out / "gallery" / "index.html").is_file()
    assert "window.UNIMAT_GALLERY_DATA" in (out / "gallery" / "data" / "crystals.js").read_text()
    # --overwrite removes every file of the previous result (all formats, its gallery), and only those
    assert main(["sample", "--checkpoint", str(CKPT), "--num", "1", "--steps", "5", "--composition", "SrTiO3",
                 "--threads", "1", "--out", str(out), "--overwrite", "--format", "cif", "--no-gallery"]) == 0
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert left == ["cif", "cif/sample_000000.cif", "summary.csv", "summary.json"]


@pytest.mark.skipif(not CKPT.exists(), reason="released checkpoint not present")
@pytest.mark.parametrize("fmt", ["extxyz", "cif"])
def test_generate_batch_tables_and_extxyz_frames_carry_the_facts(tmp_path, fmt):
    from unimat_dist.batch_generation import load_batch_config, read_generated_manifest, run_generate_batch
    from unimat_dist.batch_generation.shards import read_shard

    (tmp_path / "req.csv").write_text("id,composition,samples\nsto,SrTiO3,2\nbto,BaTiO3,1\nbad,Sr9Ti9O27,1\n")
    out = tmp_path / "gen"
    overrides = [f"model.checkpoint={CKPT}", "requests.source=csv", f"requests.uri={tmp_path / 'req.csv'}",
                 "requests.id_column=id", "requests.samples_column=samples", "sampling.steps=20",
                 f"output.uri={out}", f"output.format={fmt}", "output.requests_per_shard=2", "run.executor=local",
                 "run.torch_threads=1"]
    run_generate_batch(load_batch_config(None, overrides))
    m = read_generated_manifest(str(out))
    assert m["tables"] == {"csv": "summary.csv", "json": "summary.json"}
    table = json.loads((out / "summary.json").read_text())
    rows = table["crystals"]
    assert table["keys"][:len(TABLE_KEYS)] == list(TABLE_KEYS)
    assert [(r["request_id"], r["sample"], r["name"]) for r in rows] == \
           [("sto", 0, "sto__0"), ("sto", 1, "sto__1"), ("bto", 0, "bto__0")]  # the rejected request has none
    assert [r["formula"] for r in rows] == ["SrTiO3", "SrTiO3", "BaTiO3"]
    assert all(r["spacegroup_number"] and r["matches_request"] is True and r["min_distance"] > 0 for r in rows)
    csv_rows = read_table_csv(out / "summary.csv")
    assert list(csv_rows[0]) == table["keys"] and [c["name"] for c in csv_rows] == [r["name"] for r in rows]
    for r in rows:  # the shard and position each row names hold that crystal
        data = (out / r["shard"]).read_bytes()
        s = list(read_shard(data, fmt))[r["shard_index"]]
        assert s.composition.reduced_formula == r["formula"] and len(s) == r["num_atoms"]
        if fmt == "extxyz":
            info = facts_from_info(ase_read(out / r["shard"], index=r["shard_index"]).info)
            assert info["request_id"] == r["request_id"] and info["sample"] == r["sample"]
            for key in FACT_KEYS:
                assert info[key] == (pytest.approx(r[key], rel=1e-12) if isinstance(r[key], float) else r[key]), key
    before = {p: p.stat().st_mtime_ns for p in (out / "summary.csv", out / "summary.json")}
    run_generate_batch(load_batch_config(None, overrides))  # a finished job: tables untouched
    assert {p: p.stat().st_mtime_ns for p in before} == before
    run_generate_batch(load_batch_config(None, overrides + ["sampling.seed=3", "output.overwrite=true"]))
    assert json.loads((out / "summary.json").read_text())["fingerprint"] != table["fingerprint"]


@pytest.mark.parametrize("fmt", ["cif", "json"])
def test_service_response_carries_facts_and_symmetrised_cif(fmt):
    from pymatgen.io.cif import CifParser

    from deploy.app import _Pending, _response_body
    from deploy.schemas import GenerateResponse
    from unimat_dist.generation import GenerationJob
    from unimat_dist.inference import SampleRequest

    structures = [r.structure for r in load_structures(bundled_path("perov_5", "test"), limit=3)] + [None]
    job = GenerationJob(4, SampleRequest(None, True, {}, 0.0), "ddim", 10, 0.0, 5)
    body = _response_body(_Pending(job, fmt, None, True), structures, {"checkpoint": "x", "step": 1})
    body["timing"] = {"total_s": 0.0, "sample_s": 0.0, "batch_requests": 1, "loop_samples": 4}
    served = GenerateResponse.model_validate(body).model_dump()  # what FastAPI sends (response_model)
    for s, entry in zip(structures, served["structures"]):
        facts = entry["facts"]
        assert list(facts) == list(FACT_KEYS)
        if s is None:
            assert facts["decoded"] is False and entry["cif_symmetrized"] is None
            continue
        assert facts == crystal_facts(s, flags=entry["validity"])
        if fmt == "cif" and facts["spacegroup_number"] > 1:
            sym = CifParser.from_str(entry["cif_symmetrized"]).parse_structures(primitive=False)[0]
            assert SpacegroupAnalyzer(sym, symprec=0.1).get_space_group_number() == facts["spacegroup_number"]
        else:
            assert entry["cif_symmetrized"] is None
    json.dumps(served, allow_nan=False)


def test_energy_report_lists_its_relaxed_crystals_with_facts(tmp_path):
    from pymatgen.core import Lattice

    from unimat_dist.cli import main
    from unimat_dist.evaluation.energy import load_energy_records
    from unimat_dist.evaluation.structures_io import write_cifs

    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    folder = tmp_path / "gen"
    write_cifs([("rocksalt", nacl), ("rocksalt_prim", nacl.get_primitive_structure())], folder)
    rep = tmp_path / "report"
    assert main(["evaluate", "energy", "--generated", str(folder), "--steps", "20", "--workers", "1",
                 "--records", str(tmp_path / "rec.jsonl"), "--out", str(tmp_path / "m.json"),
                 "--report", str(rep)]) == 0
    records = {r["id"]: r for r in load_energy_records(tmp_path / "rec.jsonl")}
    rows = json.loads((rep / "summary.json").read_text())["crystals"]
    assert sorted(r["id"] for r in rows) == sorted(records) and list(rows[0])[:len(TABLE_KEYS)] == list(TABLE_KEYS)
    for r in rows:
        rec = records[r["id"]]
        assert r["spacegroup_number"] == 225 and r["formula"] == "NaCl" and r["converged"] == rec["converged"]
        assert r["e_hull"] == rec["e_hull"] and r["energy_per_atom"] == rec["e_final_per_atom"]
        assert r["min_distance_pair"] == "Cl-Na" and not r["too_close"]
        assert Structure.from_file(rep / r["cif"]).composition.reduced_formula == "NaCl"
        assert (rep / r["poscar"]).is_file() and (rep / r["cif_sym"]).is_file()
    assert [c["id"] for c in read_table_csv(rep / "summary.csv")] == [r["id"] for r in rows]
    frames = ase_read(rep / "samples.extxyz", index=":")
    assert [facts_from_info(a.info)["e_hull"] for a in frames] == pytest.approx([r["e_hull"] for r in rows])
    md = (rep / "summary.md").read_text()
    assert "Relaxed crystals, lowest E_hull first" in md and "Fm-3m" in md


@pytest.mark.skipif(not CKPT.exists(), reason="released checkpoint not present")
def test_results_sampling_writes_the_table_and_frames_with_facts(tmp_path):
    from unimat_dist.evaluation.structures_io import load_structures as load
    from unimat_dist.recipes.results import RunOptions, sample_run

    path, stats = sample_run(RunOptions(checkpoint=str(CKPT), dataset="perov_5", out=tmp_path, num=6, steps=20,
                                        batch_size=4))
    rows = json.loads((tmp_path / "summary.json").read_text())["crystals"]
    assert [r["index"] for r in rows] == list(range(6)) and stats["facts_seconds"] > 0
    assert [t["name"] for t in read_table_csv(tmp_path / "summary.csv")] == [r["name"] for r in rows]
    frames = ase_read(path, index=":")
    assert len(frames) == stats["num_decoded"] == sum(bool(r["decoded"]) for r in rows)
    for k, atoms in enumerate(frames):
        r = rows[atoms.info["sample"]]
        assert r["extxyz_frame"] == k
        info = facts_from_info(atoms.info)
        assert info["name"] == r["name"] and info["spacegroup_symbol"] == r["spacegroup_symbol"]
        assert info["density"] == pytest.approx(r["density"], rel=1e-12)
    assert [rec.structure.composition for rec in load(path)] == \
           [AseAtomsAdaptor.get_structure(a).composition for a in frames]  # the evaluation reads the same file
