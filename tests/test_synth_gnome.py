"""``unimat data synth-gnome``: a GNoME-layout release of any size, reproducible, held to target histograms,
and read by the real ingest job (data_pipeline/synth_gnome.py)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.gnome_format import SUMMARY_COLUMNS
from data_pipeline.synth_gnome import (DEFAULT_STATS, Synthesizer, _material_ids, bundled_bases, stats_from_summary,
                                       write_synthetic_release)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bases():
    return bundled_bases()


def eval_list(text: str) -> list[str]:
    import ast

    return ast.literal_eval(text)


def _tv(a: dict, b: dict) -> float:
    keys = set(a) | set(b)
    return 0.5 * sum(abs(float(a.get(k, 0)) - float(b.get(k, 0))) for k in keys)


def test_release_layout_and_reproducible(tmp_path, bases):
    n = 600
    info = write_synthetic_release(tmp_path / "a", n, seed=3, bases=bases, stream=None)
    write_synthetic_release(tmp_path / "b", n, seed=3, bases=bases, stream=None)
    for name in ("stable_materials_summary.csv", "by_id.zip", "by_composition.zip", "by_reduced_formula.zip"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert not list((tmp_path / "a").glob("*.partial"))
    with open(tmp_path / "a" / "stable_materials_summary.csv", newline="") as fh:
        reader = csv.reader(fh)
        assert next(reader) == [""] + SUMMARY_COLUMNS  # the release's header: unnamed index column first
        rows = list(reader)
    assert len(rows) == n == info["rows"]
    ids = [r[2] for r in rows]
    assert len(set(ids)) == n and all(len(i) == 10 and int(i, 16) >= 0 for i in ids)
    with zipfile.ZipFile(tmp_path / "a" / "by_id.zip") as zf:
        names = zf.namelist()
        assert sorted(names) == sorted(f"by_id/{i}.CIF" for i in ids)
        from pymatgen.core import Composition, Structure

        for row in rows[:40]:  # index, Composition, MaterialId, Reduced Formula, Elements, NSites, Volume, Density
            s = Structure.from_str(zf.read(f"by_id/{row[2]}.CIF").decode(), fmt="cif")
            assert len(s) == int(row[5]) and s.composition == Composition(row[1])
            assert s.composition.reduced_formula == Composition(row[3]).reduced_formula
            assert sorted(eval_list(row[4])) == sorted(el.symbol for el in s.composition.elements)
            assert abs(s.volume - float(row[6])) / s.volume < 1e-3 and abs(s.density - float(row[7])) < 0.01
    with zipfile.ZipFile(tmp_path / "a" / "by_composition.zip") as zf:
        comp = zf.namelist()
        assert all(c.startswith("by_composition/") and c.endswith(".CIF") for c in comp)
        assert len(comp) == info["compositions"] == len({r[1] for r in rows})
    with zipfile.ZipFile(tmp_path / "a" / "by_reduced_formula.zip") as zf:
        assert len(zf.namelist()) == info["reduced_formulas"] == len({r[3] for r in rows})


def test_histograms_follow_the_target_and_a_real_summary(tmp_path, bases):
    info = write_synthetic_release(tmp_path / "r", 4000, seed=0, bases=bases, stream=None)
    got = stats_from_summary(tmp_path / "r" / "stable_materials_summary.csv")
    assert _tv(got["n_elements"], DEFAULT_STATS["n_elements"]) < 0.03
    assert _tv(got["nsites"], DEFAULT_STATS["nsites"]) < 0.03
    assert got["n_elements"] == pytest.approx(info["achieved"]["n_elements"], abs=1e-3)
    # --stats-from: another target (binaries and small cells only) is followed too
    other = {"n_elements": {"2": 0.7, "3": 0.3}, "nsites": {"1-4": 0.5, "5-8": 0.5}}
    write_synthetic_release(tmp_path / "o", 2000, seed=1, stats=other, bases=bases, stream=None)
    got = stats_from_summary(tmp_path / "o" / "stable_materials_summary.csv")
    assert _tv(got["n_elements"], other["n_elements"]) < 0.05 and _tv(got["nsites"], other["nsites"]) < 0.05


def test_volume_per_atom_follows_a_target_when_there_is_one(tmp_path, bases):
    """Lattice sizes: a summary CSV's Volume/NSites histogram is a target too (``--stats-from`` reads it),
    met by choosing crystals, not rescaling them, while the other two histograms still hold. Without one
    (the default) the volumes are the bundled crystals' own, reported but not targeted."""
    info = write_synthetic_release(tmp_path / "d", 1000, seed=2, bases=bases, stream=None)
    assert info["target"]["volume_per_atom"] is None
    assert sum(info["achieved"]["volume_per_atom"].values()) == pytest.approx(1.0, abs=1e-3)
    target = dict(DEFAULT_STATS, volume_per_atom={"8-12": 0.1, "12-16": 0.3, "16-20": 0.35, "20-25": 0.2,
                                                  "25-35": 0.05})
    info = write_synthetic_release(tmp_path / "v", 3000, seed=1, stats=target, bases=bases, stream=None)
    got = stats_from_summary(tmp_path / "v" / "stable_materials_summary.csv")
    assert _tv(got["volume_per_atom"], target["volume_per_atom"]) < 0.05
    assert got["volume_per_atom"] == pytest.approx(info["achieved"]["volume_per_atom"], abs=1e-3)
    assert _tv(got["n_elements"], DEFAULT_STATS["n_elements"]) < 0.04 and _tv(got["nsites"], DEFAULT_STATS["nsites"]) < 0.04
    # the volume histogram read back from the summary is a target that reproduces itself
    again = write_synthetic_release(tmp_path / "again", 3000, seed=4, stats=got, bases=bases, stream=None)
    assert _tv(again["achieved"]["volume_per_atom"], got["volume_per_atom"]) < 0.05
    with pytest.raises(ValueError, match="volume_per_atom bins"):
        Synthesizer(bases, dict(DEFAULT_STATS, volume_per_atom={"7-9": 1.0}))


def test_substitution_is_chemically_local_and_cells_stay_sane(bases):
    s = Synthesizer(bases, seed=5)
    for _ in range(300):
        z, frac, params = s.draw()
        assert z.min() >= 1 and z.max() <= 94
        assert np.all((frac >= 0) & (frac < 1)) and np.all(params[:3] > 0.5) and np.all((params[3:] > 0) & (params[3:] < 180))
        ca, cb, cg = np.cos(np.radians(params[3:]))
        assert 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg > 0  # a real cell (positive volume)


def test_ids_are_distinct_at_gnome_scale():
    ids = _material_ids(0)
    sample = {next(ids) for _ in range(300_000)}
    assert len(sample) == 300_000  # a bijection of the counter: no collisions (hash prefixes collide at 2.2M)


def test_refuses_foreign_files_and_needs_overwrite(tmp_path, bases):
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="did not write"):
        write_synthetic_release(tmp_path, 10, bases=bases, stream=None)
    assert (tmp_path / "mine.txt").read_text() == "keep"
    out = tmp_path / "rel"
    write_synthetic_release(out, 10, bases=bases, stream=None)
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_synthetic_release(out, 10, bases=bases, stream=None)
    write_synthetic_release(out, 12, bases=bases, stream=None, overwrite=True)
    assert json.loads((out / "synth_gnome.json").read_text())["rows"] == 12


def test_cli_writes_a_release_the_ingest_job_reads(tmp_path):
    rel, shards = tmp_path / "rel", tmp_path / "shards"
    env_cmd = [sys.executable, "-m", "unimat_dist"]
    r = subprocess.run(env_cmd + ["data", "synth-gnome", "1500", str(rel)], capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "achieved" in r.stderr and "wrote 1,500 rows" in r.stderr
    r = subprocess.run(env_cmd + ["ingest", "--config", "cluster/jobs/ingest_gnome.yaml", "--source", str(rel),
                                  "--output", str(shards), "--executor", "local"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((shards / "manifest.json").read_text())
    c = m["counts"]
    assert c["read"] == 1500 and c["written"] + c["quarantined"] == 1500
    assert c["written"] > 1400  # only cells with > L=24 atoms of one element are refused
    assert set(c.get("quarantined_by_reason", {})) <= {"too_many_atoms_per_element", "overlapping_atoms"}
