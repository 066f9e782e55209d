"""The gallery (``unimat gallery``) of a real ``unimat sample`` run, opened in headless Chromium from disk
(file://, every other URL aborted: the page must work offline with no server and no CDN).

Checks the cards against the run's table (summary.json "crystals"): count, formulas, space groups; that the
formula / validity / energy filters narrow the cards to exactly the matching rows; that a click opens the
3D viewer and its canvas is drawn; that the CIF download parses back to the same crystal; the metrics
header and the side-by-side mode. Screenshots go to out/test-artifacts/ (``UNIMAT_UPDATE_DOCS_IMG=1`` also
refreshes docs/img/gallery.png and docs/img/gallery-viewer.png for the README).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from browser import canvas_drawn, chromium_page, screenshot

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "checkpoints" / "perov5_transformer_cpu.pt"

pytestmark = pytest.mark.timeout(300)


THUMBS = "Array.from(document.querySelectorAll('#um-grid img.um-thumb'))"
THUMBS_LOADED = THUMBS + ".every(i => i.complete && i.naturalWidth > 0)"


def _download(page, fmt: str) -> str:
    """The text behind the open viewer's CIF / POSCAR download link."""
    return page.evaluate(f"fetch(document.querySelector('#um-viewer a[data-format={fmt}]').href).then(r => r.text())")


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    """A real run: ``unimat sample`` of the released Perov-5 checkpoint, with energies added to its table
    (as an evaluation would) and a metrics.json carrying COV/EMD numbers."""
    from unimat_dist.cli import main

    if not CHECKPOINT.is_file():
        pytest.skip(f"{CHECKPOINT} missing")
    run = tmp_path_factory.mktemp("gallery") / "run"
    rc = main(["sample", "--checkpoint", str(CHECKPOINT), "--num", "12", "--steps", "20", "--device", "cpu",
               "--threads", "1", "--seed", "3", "--out", str(run)])
    assert rc == 0
    summary = json.loads((run / "summary.json").read_text())
    for n, row in enumerate(summary["crystals"]):
        row["e_hull"] = round(0.05 * n, 3)
    (run / "summary.json").write_text(json.dumps(summary))
    metrics = {"struct_validity": 0.9, "comp_validity": 0.8, "cov_recall": 0.625, "cov_precision": 0.25,
               "emd_density": 0.125}
    (run / "metrics.json").write_text(json.dumps({"proxy": {"model": metrics}}))
    ref = run.parent / "reference"
    ref.mkdir()
    for row in summary["crystals"][:3]:  # reference crystals of the same compositions (symmetrised cells)
        shutil.copyfile(run / (row["cif_sym"] or row["cif"]), ref / f"ref_{row['name']}.cif")
    return run, summary["crystals"], ref


def test_gallery_in_headless_chromium(sample_run):
    from pymatgen.core import Structure

    from unimat_dist.cli import main
    from unimat_dist.crystal_facts import crystal_facts

    run, rows, ref = sample_run
    rows = [r for r in rows if r["decoded"]]
    # the gallery `unimat sample` wrote itself (summary.json names it): one card per decoded crystal
    assert json.loads((run / "summary.json").read_text())["gallery"] == "gallery/index.html"
    with chromium_page() as page:
        page.goto((run / "gallery" / "index.html").resolve().as_uri())
        page.wait_for_function("window.UnimatGallery && UnimatGallery.ready")
        assert page.locator("#um-grid .um-card").count() == len(rows)
        screenshot(page, "gallery_of_unimat_sample")
    assert main(["gallery", str(run), "--reference", str(ref), "--workers", "1"]) == 0
    page_path = run / "gallery" / "index.html"
    assert page_path.is_file()
    assert len(list((run / "gallery" / "thumbs").glob("*.png"))) >= len(rows)
    for f in [page_path, *(run / "gallery" / "static").glob("*.*s*")]:  # no CDN: nothing loaded from a URL
        remote = r"(src|href)\s*=\s*[\"']?(https?:)?//|url\(\s*[\"']?(https?:)?//|@import"
        assert not re.search(remote, f.read_text()), f

    errors: list[str] = []
    with chromium_page(errors=errors) as page:
        page.goto(page_path.resolve().as_uri())
        page.wait_for_function("window.UnimatGallery && UnimatGallery.ready")
        page.wait_for_function(THUMBS_LOADED)

        # the cards are the table's crystals, in run order
        cards = page.locator("#um-grid .um-card")
        assert cards.count() == len(rows)
        assert [cards.nth(i).get_attribute("data-formula") for i in range(len(rows))] == [r["formula"] for r in rows]
        assert [cards.nth(i).get_attribute("data-spacegroup") for i in range(len(rows))] == \
            [r["spacegroup_symbol"] or "" for r in rows]
        assert page.locator("#um-grid img.um-thumb").count() == len(rows)
        assert "cov_recall" in page.locator("#um-metrics").inner_text()
        assert "62.5 %" in page.locator("#um-metrics").inner_text()
        screenshot(page, "gallery", full_page=False,
                   to=ROOT / "docs" / "img" / "gallery.png" if os.environ.get("UNIMAT_UPDATE_DOCS_IMG") else None)

        # formula filter: exactly the rows whose formula contains the text
        counts = {}
        for r in rows:
            counts[r["formula"]] = counts.get(r["formula"], 0) + 1
        target = min(counts, key=lambda f: sum(f.lower() in g.lower() for g in (r["formula"] for r in rows)))
        expected = sum(target.lower() in r["formula"].lower() for r in rows)
        page.fill("#um-f-formula", target)
        page.wait_for_function(f"document.querySelectorAll('#um-grid .um-card').length === {expected}")
        assert expected < len(rows)
        assert all(target.lower() in f.lower() for f in
                   page.locator("#um-grid .um-card").evaluate_all("cs => cs.map(c => c.dataset.formula)"))
        page.fill("#um-f-formula", "")

        # validity filter: decoded, structure- and composition-valid rows
        n_valid = sum(bool(r["structure_valid"] and r["composition_valid"]) for r in rows)
        page.select_option("#um-f-valid", "valid")
        page.wait_for_function(f"document.querySelectorAll('#um-grid .um-card').length === {n_valid}"
                               if n_valid else "document.querySelector('.um-empty') !== null")
        page.select_option("#um-f-valid", "")

        # energy filter and sort
        page.select_option("#um-f-ekey", "e_hull")
        page.fill("#um-f-emax", "0.1")
        expected = sum(r["e_hull"] <= 0.1 for r in rows)
        page.wait_for_function(f"document.querySelectorAll('#um-grid .um-card').length === {expected}")
        page.fill("#um-f-emax", "")
        page.select_option("#um-sort", "e_hull")
        page.select_option("#um-sort-dir", "-1")
        first_formula = "document.querySelector('#um-grid .um-card').dataset.formula"
        page.wait_for_function(f"{first_formula} === {json.dumps(rows[-1]['formula'])}")
        page.select_option("#um-sort", "")
        page.select_option("#um-sort-dir", "1")
        page.wait_for_function(f"document.querySelectorAll('#um-grid .um-card').length === {len(rows)}")

        # the 3D viewer: canvas drawn, supercell, CIF download = the crystal
        page.locator("#um-grid .um-card").first.click()
        page.wait_for_selector("#um-viewer canvas.um-canvas")
        assert canvas_drawn(page, "#um-viewer canvas.um-canvas") > 0.01
        n1 = page.evaluate("document.querySelector('#um-viewer canvas') && 1")
        assert n1 == 1
        page.select_option("#um-viewer .um-supercell", "2")
        assert canvas_drawn(page, "#um-viewer canvas.um-canvas") > 0.01
        screenshot(page, "gallery-viewer", full_page=False,
                   to=ROOT / "docs" / "img" / "gallery-viewer.png" if os.environ.get("UNIMAT_UPDATE_DOCS_IMG") else None)
        cif, poscar = _download(page, "CIF"), _download(page, "POSCAR")
        hrefs = page.locator("#um-viewer a.um-btn-file").evaluate_all("as => as.map(a => a.getAttribute('href'))")
        assert any(h.endswith("cif/sample_%06d.cif" % rows[0]["index"]) for h in hrefs)
        from_page = Structure.from_str(cif, fmt="cif")
        original = Structure.from_file(run / rows[0]["cif"])
        assert from_page.composition == original.composition
        assert crystal_facts(from_page)["spacegroup_symbol"] == rows[0]["spacegroup_symbol"]
        assert Structure.from_str(poscar, fmt="poscar").composition == original.composition
        page.keyboard.press("Escape")
        assert page.locator("#um-viewer").count() == 0

        # side by side with the reference crystals of the same composition
        page.select_option("#um-mode", "pairs")
        page.wait_for_selector(".um-group")
        ref_formulas = {r["formula"] for r in rows[:3]}
        shown = set(page.locator(".um-group").evaluate_all("gs => gs.map(g => g.dataset.formula)"))
        assert shown == ref_formulas
        assert page.locator(".um-group .um-ref .um-card").count() == 3
        screenshot(page, "gallery-side-by-side", full_page=False)
    assert errors == []


def test_gallery_cache_single_file_and_hook(sample_run, tmp_path):
    """A second build renders nothing again (thumbnails cached by structure hash); the single-file page
    works on its own; write_gallery never raises (it returns None for a folder without crystals)."""
    from unimat_dist.gallery import build_gallery, write_gallery

    run, rows, _ref = sample_run
    out = tmp_path / "g"
    first = build_gallery(run, out, workers=1, progress=False)
    second = build_gallery(run, out, workers=1, progress=False)
    assert first.crystals == second.crystals == sum(1 for r in rows if r["decoded"])
    assert second.timings["rendered"] == 0 and second.timings["cached"] >= first.timings["rendered"] > 0
    data = (out / "data" / "crystals.js").read_text()
    assert "window.UNIMAT_GALLERY_DATA" in data
    single = tmp_path / "one.html"
    build_gallery(run, out, workers=1, progress=False, single_file=single)
    text = single.read_text()
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=|src=\"(?!data:)", text)  # nothing loaded from elsewhere
    errors: list[str] = []
    with chromium_page(errors=errors) as page:
        page.goto(single.as_uri())
        page.wait_for_function("window.UnimatGallery && UnimatGallery.ready")
        assert page.locator("#um-grid .um-card").count() == first.crystals
        page.wait_for_function(THUMBS_LOADED)
        page.locator("#um-grid .um-card").nth(1).click()
        assert canvas_drawn(page, "#um-viewer canvas.um-canvas") > 0.01
        # without PNG thumbnails the cards draw the structures themselves
        bare = build_gallery(run, tmp_path / "bare", workers=1, progress=False, thumbnails=False)
        assert not list((tmp_path / "bare" / "thumbs").glob("*.png"))
        page.goto(bare.path.as_uri())
        page.wait_for_function(f"document.querySelectorAll('canvas.um-thumb[data-drawn]').length === {first.crystals}")
        assert canvas_drawn(page, "#um-grid canvas.um-thumb") > 0.01
    assert errors == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_gallery(empty) is None
    assert write_gallery(run, tmp_path / "hook" / "page.html", workers=1) == tmp_path / "hook" / "page.html"


def test_gallery_reads_run_layouts(tmp_path):
    """Runs without a facts table: a CIF folder, generate-batch shards (ids from request_id + sample), a
    folder of runs (one set each), one structure file; the facts are computed (crystal_facts + flags)."""
    from unimat_dist.crystal_facts import crystal_facts
    from unimat_dist.evaluation.structures_io import load_structures, write_cifs, write_extxyz
    from unimat_dist.gallery.build import build_gallery, load_run

    recs = [r for r in load_structures(ROOT / "data" / "mp_20_subset" / "test.csv.gz", limit=6) if r.structure]
    cif_run = tmp_path / "runs" / "cifs"
    write_cifs([(f"c{i}", r.structure) for i, r in enumerate(recs[:3])], cif_run / "cif")
    shard_run = tmp_path / "runs" / "batch"
    for part, chunk in enumerate((recs[:2], recs[2:4])):
        for n, r in enumerate(chunk):
            r.metadata = {"request_id": f"req{part}", "decoded": True, "structure_valid": True}
            r.properties = {"sample": float(n)}
        write_extxyz(chunk, shard_run / "shards" / f"part-{part:06d}.extxyz")

    entries = load_run(cif_run)
    assert [e.id for e in entries] == ["c0", "c1", "c2"] and all(e.files["cif"].is_file() for e in entries)
    entries = load_run(shard_run)
    assert [e.id for e in entries] == ["req0-0", "req0-1", "req1-0", "req1-1"]
    assert all(e.info["structure_valid"] is True for e in entries)
    both = load_run(tmp_path / "runs")
    assert sorted({e.set for e in both}) == ["batch", "cifs"] and len(both) == 7
    assert len(load_run(shard_run / "shards" / "part-000001.extxyz")) == 2

    res = build_gallery(tmp_path / "runs", workers=1, progress=False, thumbnails=False)
    text = (res.path.parent / "data" / "crystals.js").read_text()
    data = json.loads(json.loads(text[text.index("JSON.parse(") + len("JSON.parse("):text.rindex(")")]))
    rows = data["crystals"]
    assert len(rows) == 7 and res.crystals == 7
    for row, rec in zip(rows[4:], recs[:3]):  # the cifs set (after batch): facts computed here
        assert row["formula"] == rec.structure.composition.reduced_formula
        assert row["spacegroup_number"] == crystal_facts(rec.structure)["spacegroup_number"]
        assert isinstance(row["structure_valid"], bool) and isinstance(row["composition_valid"], bool)
        assert row["files"]["cif"].endswith(f"cif/{row['id'].split('/')[-1]}.cif")


@pytest.mark.parametrize("fmt", ["cif", "extxyz"])
def test_gallery_of_a_generate_batch_run(tmp_path, fmt):
    """A real (local-executor) generate-batch output: the summary.json rows name each crystal's shard and
    position; the gallery shows every row with its facts and the right structure."""
    import yaml

    from unimat_dist.cli import main
    from unimat_dist.crystal_facts import crystal_facts
    from unimat_dist.gallery.build import build_gallery, load_run

    if not CHECKPOINT.is_file():
        pytest.skip(f"{CHECKPOINT} missing")
    (tmp_path / "req.csv").write_text("id,composition,samples\nr0,SrTiO3,2\nr1,BaZrO3,2\nr2,KNbO3,1\n")
    out = tmp_path / "out"
    cfg = {"model": {"checkpoint": str(CHECKPOINT)},
           "requests": {"source": "csv", "uri": str(tmp_path / "req.csv"), "id_column": "id", "samples_column": "samples"},
           "sampling": {"sampler": "ddim", "steps": 10, "seed": 7, "max_batch_samples": 64},
           "output": {"uri": str(out), "format": fmt, "requests_per_shard": 2},
           "run": {"executor": "local", "num_cpus": 1, "actors": 1, "cpus_per_actor": 1, "torch_threads": 1}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["generate-batch", "--config", str(tmp_path / "job.yaml")]) == 0
    rows = json.loads((out / "summary.json").read_text())["crystals"]
    entries = load_run(out)
    assert [e.id for e in entries] == [r["name"] for r in rows if r["decoded"]]
    for e, r in zip(entries, [r for r in rows if r["decoded"]]):
        assert e.structure is not None and e.info["request_id"] == r["request_id"]
        assert crystal_facts(e.structure)["formula"] == r["formula"] == e.info["formula"]
    res = build_gallery(out, workers=1, progress=False)
    assert res.crystals == len(entries) and len(list((out / "gallery" / "thumbs").glob("*.png"))) >= 1
