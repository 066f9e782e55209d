"""The analysed bundled reference splits shipped as package data (evaluation/data/reference_features):
they match the bundled files, equal freshly computed fingerprints, are used from an empty user cache, and
are ignored for a changed split, other options or a damaged file."""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import shutil

import numpy as np
import pytest

from unimat_dist.evaluation import feature_cache as fc
from unimat_dist.evaluation.fingerprints import analyse_record
from unimat_dist.evaluation.structures_io import file_checksum, load_structures

INDEX = json.loads((fc.SHIPPED_DIR / "index.json").read_text())["entries"]
OPTS = fc.SHIPPED_OPTIONS
PER_SPLIT = 20  # reference crystals compared with a fresh computation, spread over each file


@pytest.fixture(autouse=True)
def _shipped_on(monkeypatch, tmp_path):
    monkeypatch.delenv(fc.SHIPPED_ENV, raising=False)
    monkeypatch.setenv("UNIMAT_CACHE", str(tmp_path / "empty_cache"))


def test_index_covers_the_bundled_test_splits(bundled):
    by = {(e["dataset"], e["split"]): e for e in INDEX}
    for name in ("perov_5", "carbon_24", "mp_20_subset"):
        e = by[(name, "test")]
        assert e["sha256"] == file_checksum(bundled[name]["test"]), f"{name}: rebuild the shipped features"
        assert e["protocol"] == fc.PROTOCOL_VERSION and e["options"] == OPTS
    for e in INDEX:
        raw = (fc.SHIPPED_DIR / e["file"]).read_bytes()
        assert hashlib.sha256(raw).hexdigest() == e["file_sha256"]
        assert raw[:2] == b"\x1f\x8b" and json.loads(gzip.decompress(raw))["format"] == fc.CACHE_FORMAT  # never pickle
    assert sum((fc.SHIPPED_DIR / e["file"]).stat().st_size for e in INDEX) < 25e6


def _same(a, b) -> None:
    for name in ("id", "constructed", "comp_valid", "struct_valid", "valid", "formula", "n_sites", "n_elements",
                 "invalid_reason"):
        assert getattr(a, name) == getattr(b, name), name
    assert a.density == pytest.approx(b.density, rel=1e-12)
    for name in ("struct_fp", "comp_fp"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            # rtol 1e-6: CrystalNN's fingerprints differ in the 7th digit between CPUs (seen: 1.2e-7 relative
            # on an AVX2-only EPYC against the machine that computed the shipped file)
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-12, equal_nan=True, err_msg=f"{a.id} {name}")


@pytest.mark.parametrize("entry", INDEX, ids=lambda e: f"{e['dataset']}:{e['split']}")
def test_shipped_equal_freshly_computed(entry, bundled):
    path = bundled[entry["dataset"]][entry["split"]]
    shipped, _ = fc.shipped_features(file_checksum(path), keep_structures=False, limit=None, **OPTS)
    recs = load_structures(path)
    assert len(shipped) == len(recs) == entry["n"]
    assert [f.id for f in shipped] == [r.id for r in recs]
    for i in sorted(set(np.linspace(0, len(recs) - 1, PER_SPLIT).astype(int).tolist())):
        _same(shipped[i], analyse_record(recs[i], niggli=OPTS["niggli"], fingerprints=OPTS["fingerprints"],
                                         oxidation_set=OPTS["oxidation_set"]))


def test_100_crystals_against_perov5_test_from_an_empty_cache_take_the_shipped_path(bundled, tmp_path):
    from unimat_dist.evaluation.proxy import proxy_evaluation

    before = dict(fc.COUNTERS)
    res = proxy_evaluation(bundled["perov_5"]["val"], "perov_5:test", "perov5", limit_generated=100,
                           novelty=False, workers=2, progress=False)
    m = res.metrics
    assert m["n_generated"] == 100 and m["n_reference"] == 3785
    assert m["reference_cache_hit"] and m["reference_shipped"]
    # Only the 100 generated crystals were fingerprinted: no reference crystal was recomputed.
    assert fc.COUNTERS["analysed_records"] - before["analysed_records"] == 100
    assert fc.COUNTERS["shipped_hits"] - before["shipped_hits"] == 1
    assert not list((tmp_path / "empty_cache").rglob("*.json"))
    assert 0.0 < m["cov_recall"] <= 1.0


def test_changed_split_other_options_and_damaged_files_are_computed(bundled, tmp_path, caplog):
    src = bundled["perov_5"]["test"]
    text = gzip.decompress(src.read_bytes())
    # The decompressed official file (what `unimat data download` stores) is the same split: shipped.
    official = tmp_path / "test.csv"
    official.write_bytes(text)
    feats, info = fc.analyse_set(official, limit=5, workers=1, progress=False, **OPTS)
    assert info["shipped"] and [f.id for f in feats] == [r.id for r in load_structures(src, limit=5)]
    # One byte more: another file, computed.
    changed = tmp_path / "changed.csv"
    changed.write_bytes(text + b"\n")
    before = fc.COUNTERS["analysed_records"]
    feats, info = fc.analyse_set(changed, limit=2, workers=1, progress=False, **OPTS)
    assert not info["shipped"] and fc.COUNTERS["analysed_records"] - before == 2
    # Other options are never served from the shipped layer.
    sha = file_checksum(src)
    assert fc.shipped_features(sha, keep_structures=True, limit=None, **OPTS) is None
    assert fc.shipped_features(sha, True, True, "icsd24", False, None) is None
    # A damaged shipped file is reported and recomputed, not trusted.
    root = tmp_path / "shipped"
    shutil.copytree(fc.SHIPPED_DIR, root)
    entry = next(e for e in INDEX if e["sha256"] == sha)
    raw = bytearray((root / entry["file"]).read_bytes())
    raw[100] ^= 1
    (root / entry["file"]).write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="unimat_dist.evaluation"):
        assert fc.shipped_features(sha, keep_structures=False, limit=None, root=root, **OPTS) is None
    assert "ignoring shipped reference features" in caplog.text
