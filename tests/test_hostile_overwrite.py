"""Operator mistakes with ``--output`` / ``--overwrite`` (issue 16): a job deletes only files it wrote, in a
folder its own job file marks as its output; a non-empty foreign folder and a folder overlapping the
inputs are refused with a message; sentinel files survive every case. Real ingest (local executor) and
a real generate-batch run with the released Perov-5 checkpoint (local executor, 2 DDIM steps)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_pipeline.config import IngestConfig
from data_pipeline.job import run_ingest
from unimat_dist.batch_generation import load_batch_config, run_generate_batch
from unimat_dist.output_guard import OutputRefused
from storage_emulators import s3_emulator  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "checkpoints" / "perov5_transformer_cpu.pt"


def _ingest_cfg(output: Path, limit: int = 30, source: Path | None = None) -> IngestConfig:
    cfg = IngestConfig()
    if source is None:
        cfg.source.format, cfg.source.dataset, cfg.source.limit = "cdvae-csv", "mp_20_subset", limit
    else:
        cfg.source.format, cfg.source.uri = "structure-dir", str(source)
    cfg.output.uri, cfg.output.records_per_unit = str(output), 20
    cfg.spec.max_atoms_per_element = 20
    cfg.run.executor = "local"
    return cfg


def _sentinel(path: Path, text: str = "precious") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _cif_folder(root: Path) -> Path:
    from unimat_dist.datasets import iter_cdvae_csv

    root.mkdir(parents=True)
    for k, rec in zip(range(3), iter_cdvae_csv(ROOT / "data/mp_20_subset/val.csv.gz")):
        (root / f"s{k}.cif").write_text(rec.cif)
    return root


# ------------------------------------------------------------------------------------------ ingest
def test_ingest_refuses_a_foreign_nonempty_folder_even_with_overwrite(tmp_path):
    out = tmp_path / "home"
    keep = _sentinel(out / "thesis.tex")
    cfg = _ingest_cfg(out)
    with pytest.raises(OutputRefused, match=r"is not empty \(1 entries: thesis.tex\) and is not the output of this "
                                            r"ingest job; choose an empty or new folder"):
        run_ingest(cfg)
    cfg.output.overwrite = True
    with pytest.raises(OutputRefused, match=r"holds no ingest job file \(_job.json\), so nothing in it is known to be "
                                            r"ours: --overwrite \(output.overwrite\) deletes only what an ingest job wrote"):
        run_ingest(cfg)
    assert keep.read_text() == "precious" and _files(out) == {"thesis.tex"}


def test_ingest_refuses_to_write_into_or_around_its_source(tmp_path):
    src = _cif_folder(tmp_path / "data" / "cifs")
    before = {p: (src / p).read_bytes() for p in _files(src)}
    for output in (src, src / "out", tmp_path / "data"):
        cfg = _ingest_cfg(output, source=src)
        cfg.output.overwrite = cfg.output.allow_nonempty = True  # no flag makes it acceptable
        with pytest.raises(OutputRefused, match=rf"output {output} overlaps the input {src}: a job never writes into"):
            run_ingest(cfg)
    assert {p: (src / p).read_bytes() for p in _files(src)} == before and not (src / "out").exists()


def test_ingest_overwrite_deletes_only_what_the_previous_job_wrote(tmp_path):
    out = tmp_path / "shared"
    keep = [_sentinel(out / "README.md"), _sentinel(out / "train" / "notes.txt"), _sentinel(out / "train" / "u1-0.tar"),
            _sentinel(out / ".tmp-notes.txt")]  # named like a partial write, but of no file of ours
    cfg = _ingest_cfg(out, limit=30)
    cfg.output.allow_nonempty = True
    first = run_ingest(cfg)
    old_shards = {f for f in _files(out) if f.endswith(".tar") and f != "train/u1-0.tar"}
    assert first.written > 0 and old_shards
    other = _ingest_cfg(out, limit=10)  # a different job (fingerprint) on the same folder
    with pytest.raises(OutputRefused, match="holds the output of a different ingest job"):
        run_ingest(other)
    other.output.overwrite = True
    debris = _sentinel(out / "train" / ".tmp-0badc0de-u000007-0.tar", "partial")  # what a crash leaves
    second = run_ingest(other)
    assert not debris.exists()
    assert second.read == 30 < first.read  # 10 rows of each of the three split files
    manifest = json.loads((out / "manifest.json").read_text())
    listed = {s["path"] for s in manifest["shards"]}
    tars = {f for f in _files(out) if f.endswith(".tar")}
    assert tars == listed | {"train/u1-0.tar"}  # old shards gone, the look-alike that is not ours kept
    assert all(p.read_text() == "precious" for p in keep)


def test_ingest_refuses_a_folder_owned_by_another_kind_of_job_or_holding_our_names(tmp_path):
    out = tmp_path / "gen"
    _sentinel(out / "_job.json", json.dumps({"job": "generate-batch", "fingerprint": "abc", "config": {}}))
    cfg = _ingest_cfg(out)
    cfg.output.overwrite = True
    with pytest.raises(OutputRefused, match=r"_job.json belongs to a generate-batch job, not to an ingest job: "
                                            r"refusing to delete anything there"):
        run_ingest(cfg)
    out2 = tmp_path / "foreign"
    _sentinel(out2 / "manifest.json", "{}")
    cfg = _ingest_cfg(out2)
    cfg.output.allow_nonempty = True
    with pytest.raises(OutputRefused, match=r"already has \['manifest.json'\] where this ingest job would write"):
        run_ingest(cfg)
    assert (out2 / "manifest.json").read_text() == "{}" and _files(out) == {"_job.json"}


# ------------------------------------------------------------------------------------------ generate-batch
def _gen_cfg(out: Path, seed: int = 0, *extra: str):
    return load_batch_config(None, [
        f"model.checkpoint={CHECKPOINT}", "requests.source=list", "requests.compositions=[SrTiO3]",
        "requests.samples_per_request=1", "sampling.steps=2", f"sampling.seed={seed}", f"output.uri={out}",
        "run.executor=local", "run.torch_threads=1", *extra])


def test_generate_batch_overwrite_keeps_foreign_files_and_refuses_foreign_folders(tmp_path):
    foreign = tmp_path / "results"
    keep = _sentinel(foreign / "table.csv")
    for flags in ((), ("output.overwrite=true",)):
        with pytest.raises(OutputRefused, match="results"):
            run_generate_batch(_gen_cfg(foreign, 0, *flags))
    assert _files(foreign) == {"table.csv"} and keep.read_text() == "precious"
    with pytest.raises(OutputRefused, match="overlaps the input"):
        run_generate_batch(_gen_cfg(CHECKPOINT.parent, 0, "output.overwrite=true"))  # the checkpoint's folder

    out = tmp_path / "gen"
    mine = _sentinel(out / "shards" / "keep-me.txt")
    first = run_generate_batch(_gen_cfg(out, 0, "output.allow_nonempty=true"))
    assert first.samples == 1 and "shards/part-000000.cif" in _files(out)
    assert first.gallery == str(out / "gallery" / "index.html") and (out / "gallery" / "index.html").is_file()
    old_thumbs = {f for f in _files(out) if f.startswith("gallery/thumbs/")}
    notes = _sentinel(out / "gallery" / "notes.txt")  # not a gallery file: stays
    with pytest.raises(OutputRefused, match="holds the output of a different generation job"):
        run_generate_batch(_gen_cfg(out, 1))
    second = run_generate_batch(_gen_cfg(out, 1, "output.overwrite=true"))
    assert second.requests_run == 1 and mine.read_text() == "precious"
    assert json.loads((out / "_job.json").read_text())["job"] == "generate-batch"
    assert notes.read_text() == "precious"
    files = _files(out)
    gallery = {f for f in files if f.startswith("gallery/")}
    assert files - gallery == {"_job.json", "manifest.json", "summary.csv", "summary.json", "shards/part-000000.cif",
                               "_units/part-000000.json", "shards/keep-me.txt"}
    # the previous job's gallery was deleted with its files and this job wrote its own (one crystal)
    new_thumbs = {f for f in gallery if f.startswith("gallery/thumbs/")}
    assert len(old_thumbs) == len(new_thumbs) == 1 and old_thumbs != new_thumbs
    assert {"gallery/index.html", "gallery/data/crystals.js", "gallery/notes.txt"} <= gallery
    # without a gallery (output.gallery=false) an overwrite leaves only the foreign files of that folder
    run_generate_batch(_gen_cfg(out, 2, "output.overwrite=true", "output.gallery=false"))
    assert {f for f in _files(out) if f.startswith("gallery/")} == {"gallery/notes.txt"}


# ------------------------------------------------------------------------------------------ object store
def test_overwrite_on_s3_deletes_only_the_previous_jobs_objects(s3_emulator):
    from unimat_dist.storage import filesystem

    uri = s3_emulator.uri("hostile-shared")
    opts = s3_emulator.storage_options
    fs, path = filesystem(uri, opts)
    fs.pipe_file(f"{path}/report.pdf", b"precious")
    cfg = _ingest_cfg(Path("."), limit=20)
    cfg.output.uri, cfg.output.storage_options = uri, opts
    with pytest.raises(OutputRefused, match=r"is not empty \(1 entries: report.pdf\)"):
        run_ingest(cfg)
    cfg.output.allow_nonempty, cfg.output.records_per_unit = True, 5  # 12 units: more files than the next job's
    assert run_ingest(cfg).units == 12
    other = _ingest_cfg(Path("."), limit=5)
    other.output.uri, other.output.storage_options, other.output.overwrite = uri, opts, True
    second = run_ingest(other)
    fs.invalidate_cache()
    left = {p[len(path) + 1:] for p in fs.find(path)}
    manifest = json.loads(fs.cat_file(f"{path}/manifest.json"))
    assert second.read == 15 and fs.cat_file(f"{path}/report.pdf") == b"precious"
    assert {p for p in left if p.endswith(".tar")} == {s["path"] for s in manifest["shards"]}
    assert len([p for p in left if p.startswith("_units/")]) == manifest["job"]["units"]


def test_unit_job_skips_valid_commits_only_and_accounts_for_every_unit(tmp_path):
    """The resumable-unit skeleton both jobs run: a commit record counts only with this job's fingerprint
    and the unit's current digest; a runner that loses a unit fails the job, naming it; the manifest is
    written after the units and interrupted writes of the job's own names are swept."""
    from unimat_dist.output_guard import OutputLayout, UnitJob

    class Unit:
        def __init__(self, index, body):
            self.index, self.body = index, body

        def digest(self):
            return self.body

    layout = OutputLayout("test-job", "_job.json", (r"_units/u\d+\.json", r"manifest\.json"), ("_units",))
    out = tmp_path / "o"
    (out / "_units").mkdir(parents=True)
    name = "u{:03d}".format
    (out / "_units" / "u000.json").write_text(json.dumps({"unit": 0, "fingerprint": "fp", "digest": "a"}))
    (out / "_units" / "u001.json").write_text(json.dumps({"unit": 1, "fingerprint": "old", "digest": "b"}))
    (out / "_units" / "u002.json").write_text(json.dumps({"unit": 2, "fingerprint": "fp", "digest": "changed"}))
    (out / "_units" / ".tmp-0badc0de-u003.json").write_text("partial")
    (out / "_units" / ".tmp-0badc0de-notes.txt").write_text("not a partial of ours")
    units = [Unit(i, b) for i, b in enumerate("abcd")]
    job = UnitJob(str(out), {}, layout, "fp", units, name)
    assert sorted(job.done) == [0] and [u.index for u in job.pending] == [1, 2, 3]

    def runner(pending):
        for u in pending:
            rec = {"unit": u.index, "fingerprint": "fp", "digest": u.digest()}
            (out / "_units" / f"{name(u.index)}.json").write_text(json.dumps(rec))
            yield rec

    seen = []
    with pytest.raises(RuntimeError, match=r"units \['u003'\] did not complete"):
        job.run(lambda pending: runner(pending[:-1]), seen.append)  # a runner that loses the last unit
    assert [r["unit"] for r in seen] == [1, 2]
    again = UnitJob(str(out), {}, layout, "fp", units, name)  # the rerun: only the lost unit is left
    assert [u.index for u in again.pending] == [3]
    records = again.run(runner, seen.append)
    assert sorted(records) == [0, 1, 2, 3] and [r["unit"] for r in seen] == [1, 2, 3]
    muri = again.publish({"units": len(records)})
    assert json.loads((out / "manifest.json").read_text()) == {"units": 4} and muri.endswith("manifest.json")
    assert not (out / "_units" / ".tmp-0badc0de-u003.json").exists()  # our partial swept
    assert (out / "_units" / ".tmp-0badc0de-notes.txt").exists()  # not a name of ours: kept
