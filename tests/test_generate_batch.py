"""The batch generation job: a Ray Data actor pool over work units, CIF/extxyz shards and a manifest on
file://, s3:// (moto) and gs:// (GCS emulator), killed-and-rerun without duplicated or lost requests,
rejected requests, strict configs. The model is the tiny generator trained in this session."""
from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from job_kill import kill_after_units
from generation_fixtures import COMPOSITIONS, ROOT, tiny_checkpoint  # noqa: F401 (fixture)
from storage_emulators import gcs_emulator, s3_emulator  # noqa: F401 (fixtures)
from unimat_dist.batch_generation import (
    iter_generated,
    load_batch_config,
    plan_requests,
    read_generated_manifest,
    read_unit_records,
    run_generate_batch,
)
from unimat_dist.ray_local import init_ray

UNIMAT = str(Path(sys.executable).parent / "unimat")
BAD = {"bad-outside": "Fe2O3", "bad-too-many": "V4O3"}  # Fe is outside the model's system; 4 V > L = 3


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    init_ray("local", num_cpus=2, log_to_driver=False)
    yield
    ray.shutdown()


def _csv(path: Path, n_good: int, samples: int = 2) -> Path:
    rows = ["id,composition,samples,heat_ref"]
    for i in range(n_good):
        heat = "" if i % 3 else "0.5"
        rows.append(f"req-{i:03d},{COMPOSITIONS[i % len(COMPOSITIONS)]},{samples},{heat}")
    rows += [f"{rid},{comp},{samples}," for rid, comp in BAD.items()]
    path.write_text("\n".join(rows) + "\n")
    return path


def _config(tmp: Path, checkpoint, output: str, *, executor="ray", fmt="cif", per_shard=1, steps=3, n_good=10,
            storage_options=None) -> Path:
    cfg = {
        "model": {"checkpoint": str(checkpoint)},
        "requests": {"source": "csv", "uri": str(_csv(tmp / "requests.csv", n_good)), "id_column": "id",
                     "samples_column": "samples", "property_columns": ["heat_ref"], "guidance": 1.0},
        "sampling": {"sampler": "ddim", "steps": steps, "seed": 7, "max_batch_samples": 64},
        "output": {"uri": output, "format": fmt, "requests_per_shard": per_shard,
                   "storage_options": storage_options or {}},
        "run": {"executor": executor, "num_cpus": 2, "actors": 1, "cpus_per_actor": 1, "torch_threads": 1},
    }
    path = tmp / f"job-{fmt}-{executor}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _check_complete(uri: str, n_good: int, samples: int = 2, opts=None) -> dict:
    """Every good request exactly once with all its samples; the bad ones rejected with reasons."""
    m = read_generated_manifest(uri, opts)
    ids = [rid for s in m["shards"] for rid in s["requests"]]
    assert sorted(ids) == [f"req-{i:03d}" for i in range(n_good)]  # none lost, none duplicated
    assert sorted(r["id"] for r in m["rejected"]) == sorted(BAD)
    assert all(("outside" in r["reason"]) or ("exceed" in r["reason"]) for r in m["rejected"])
    records = read_unit_records(uri, opts)
    entries = [e for r in records for e in r["requests"]]
    assert sorted(e["id"] for e in entries) == sorted(ids)
    assert all(len(e["formulas"]) == len(e["flags"]) == samples for e in entries)
    assert all(f["matches_request"] for e in entries for f in e["flags"])  # exact counts honoured
    assert len({e["seed"] for e in entries}) == len(entries)
    assert m["counts"] == {"requests": n_good + len(BAD), "generated_requests": n_good,
                           "rejected_requests": len(BAD), "samples": n_good * samples,
                           "structures_in_shards": n_good * samples}
    assert m["validity"]["count"] == n_good * samples and m["validity"]["matches_request_rate"] == 1.0
    return m


def _files(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_killed_job_reruns_exactly_the_missing_requests(tmp_path, tiny_checkpoint, ray_cluster):
    out = tmp_path / "killed"
    cfg_path = _config(tmp_path, tiny_checkpoint, str(out), steps=20, n_good=12)
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled")
    units = out / "_units"
    done_units = [p.name for p in kill_after_units([UNIMAT, "generate-batch", "--config", str(cfg_path)], env,
                                                   tmp_path / "run1.log", units, min_units=2, pattern="*.json",
                                                   timeout=240)]
    committed = _files(out)
    assert 2 <= len(done_units) < 14 and not (out / "manifest.json").exists()
    done_ids = {e["id"] for n in done_units for e in json.loads((units / n).read_text())["requests"]}
    # debris a crash can leave: a half-written local file
    (out / "shards" / ".tmp-0badc0de-part-000013.cif").write_bytes(b"partial")

    summary = run_generate_batch(load_batch_config(cfg_path))  # the same job, in this process's Ray
    assert summary.requests == 14 and summary.units_skipped == len(done_units)
    assert summary.requests_skipped == len(done_units) and summary.requests_run == 14 - len(done_units)
    after = _files(out)
    for name in committed:  # committed units were not redone: their records and shards are untouched
        if name.startswith(("_units/", "shards/part")):
            assert after[name] == committed[name], name
    m = _check_complete(str(out), 12)
    assert {e["id"] for r in read_unit_records(str(out)) for e in r["requests"]} >= done_ids
    assert not any(".tmp-" in k for k in after)  # crash debris swept
    import hashlib

    for s in m["shards"]:
        assert hashlib.sha256((out / s["path"]).read_bytes()).hexdigest() == s["sha256"]
        assert (out / s["path"]).read_text().count("\ndata_req-") == s["structures"]  # one CIF block per crystal
    # a rerun of the finished job does nothing but rewrite the manifest
    again = run_generate_batch(load_batch_config(cfg_path, ["run.executor=local"]))
    assert again.requests_run == 0 and again.units_skipped == again.units == 14
    assert {k: v for k, v in _files(out).items() if k != "manifest.json"} == \
           {k: v for k, v in after.items() if k != "manifest.json"}


def test_s3_output_with_ray_actor_pool_reads_back(tmp_path, tiny_checkpoint, s3_emulator, ray_cluster):
    uri = s3_emulator.uri("gen", "extxyz")
    cfg_path = _config(tmp_path, tiny_checkpoint, uri, fmt="extxyz", per_shard=4, n_good=6,
                       storage_options=s3_emulator.storage_options)
    summary = run_generate_batch(load_batch_config(cfg_path))
    assert summary.requests_run == 8 and summary.samples == 12 and summary.rejected == 2
    m = _check_complete(uri, 6, opts=s3_emulator.storage_options)
    assert [s["path"] for s in m["shards"]] == ["shards/part-000000.extxyz", "shards/part-000001.extxyz"]
    got = list(iter_generated(uri, s3_emulator.storage_options))
    assert len(got) == 12 and Counter(rid for rid, _, _ in got) == {f"req-{i:03d}": 2 for i in range(6)}
    for rid, k, s in got:
        comp = COMPOSITIONS[int(rid.split("-")[1]) % len(COMPOSITIONS)]
        from pymatgen.core import Composition

        assert s.composition == Composition(comp), (rid, k)  # exact counts survive the extxyz round trip
    import s3fs

    fs = s3fs.S3FileSystem(**s3_emulator.storage_options, skip_instance_cache=True)
    root = uri[len("s3://"):]
    stamps = {p[len(root) + 1:]: fs.info(p)["LastModified"] for p in fs.find(root)}
    assert all(stamps["manifest.json"] >= t for t in stamps.values())  # manifest written last


def test_gcs_output_cif_and_unconditional_requests(tmp_path, tiny_checkpoint, gcs_emulator):
    uri = gcs_emulator.uri("gen", "uncond")
    cfg = load_batch_config(None, [
        f"model.checkpoint={tiny_checkpoint}", "requests.source=unconditional", "requests.unconditional_samples=5",
        "requests.samples_per_request=2", "sampling.steps=3", f"output.uri={uri}", "output.requests_per_shard=2",
        "run.executor=local", "run.torch_threads=1",
    ])
    cfg.output.storage_options = dict(gcs_emulator.storage_options)
    summary = run_generate_batch(cfg)
    assert summary.requests == 3 and summary.samples == 5  # requests of 2, 2 and 1
    m = read_generated_manifest(uri, gcs_emulator.storage_options)
    assert m["validity"]["matches_request_rate"] is None  # nothing to match without a composition
    records = read_unit_records(uri, gcs_emulator.storage_options)
    assert [e["id"] for r in records for e in r["requests"]] == ["uncond-0", "uncond-1", "uncond-2"]
    from unimat_dist.storage import read_bytes

    text = read_bytes(f"{uri}/{m['shards'][0]['path']}", gcs_emulator.storage_options).decode()
    assert text.count("data_uncond-0__") + text.count("data_uncond-1__") == m["shards"][0]["structures"]


def test_a_different_job_is_refused_unless_overwrite(tmp_path, tiny_checkpoint):
    out = str(tmp_path / "o")
    first = _config(tmp_path, tiny_checkpoint, out, executor="local", n_good=2)
    run_generate_batch(load_batch_config(first))
    with pytest.raises(ValueError, match="different generation job"):
        run_generate_batch(load_batch_config(first, ["sampling.seed=8"]))
    summary = run_generate_batch(load_batch_config(first, ["sampling.seed=8", "output.overwrite=true"]))
    assert summary.requests_skipped == 0 and summary.requests_run == 4


def test_request_lists_and_their_errors(tmp_path):
    cfg = load_batch_config(ROOT / "cluster" / "jobs" / "generate_tiny_cpu.yaml")
    reqs = plan_requests(cfg.requests)
    assert [r.id for r in reqs][:2] == ["CdCuN3-a", "VIrO3-a"] and reqs[1].properties == {"heat_ref": -0.4}
    assert reqs[0].properties == {} and all(r.num_samples == 4 for r in reqs)
    bad = tmp_path / "bad.csv"
    for text, match in (("formula\nFe2O3\n", r"column\(s\) \['composition'\] not found"),
                        ("composition,id\nFe2O3,a\nSrTiO3,a\n", "appears twice"),
                        ("composition,samples\nFe2O3,0\n", "data row 0 .*samples.*must be >= 1"),
                        ("composition,samples\nFe2O3,many\n", "not a whole number")):
        bad.write_text(text)
        c = load_batch_config(None, [f"requests.uri={bad}"] + (["requests.id_column=id"] if ",id" in text else [])
                              + (["requests.samples_column=samples"] if "samples" in text else []))
        with pytest.raises(ValueError, match=match):
            plan_requests(c.requests)
    with pytest.raises(ValueError, match="unknown config key"):
        load_batch_config(None, ["requests.composition_colum=x"])


@pytest.mark.parametrize("path", sorted((ROOT / "cluster" / "jobs").glob("generate_*.yaml")), ids=lambda p: p.name)
def test_yaml_presets_load(path):
    cfg = load_batch_config(path)
    assert cfg.model.checkpoint and cfg.output.uri and plan_requests(cfg.requests)


def test_sampler_settings_change_the_output_identity_only_when_set():
    """A restart pass or a noise scale is part of what a job writes (its fingerprint: a resumed job with
    another setting is refused), but their defaults leave the fingerprint of older outputs unchanged."""
    from unimat_dist.batch_generation.job import fingerprint, load_batch_config, resolve_job_sampling

    def fp(overrides, defaults=None):
        return fingerprint(resolve_job_sampling(load_batch_config(None, overrides), defaults or {}, 1000), "ckpt.pt", [])

    base = fp([])
    assert fp(["sampling.restart=null", "sampling.noise_scale=1.0", "sampling.sampler=ddim", "sampling.eta=0"]) == base
    assert fp(["sampling.restart=[100, 20]"]) != base
    assert fp(["sampling.noise_scale=0.3"]) != base
    # what the checkpoint's release settings decide is part of the identity, as if the config had said it
    release = {"eta": 1.0, "noise_scale": 0.3, "restart": [100, 20]}
    assert fp([], release) == fp(["sampling.eta=1", "sampling.noise_scale=0.3", "sampling.restart=[100, 20]"]) != base
    assert fp(["sampling.restart=[]"], release) == fp(["sampling.eta=1", "sampling.noise_scale=0.3"])
    assert fp(["sampling.sampler=ddpm"], release) == fp(["sampling.sampler=ddpm"])  # defaults belong to DDIM
    # compositions without repeats: the same rules (false is the default; the checkpoint's setting counts)
    assert fp(["sampling.distinct_compositions=false"]) == base != fp(["sampling.distinct_compositions=true"])
    assert fp([], {"distinct_compositions": True}) == fp(["sampling.distinct_compositions=true"])
    assert fp(["sampling.distinct_compositions=false"], {"distinct_compositions": True}) == base
    with pytest.raises(ValueError, match="resolved"):
        fingerprint(load_batch_config(None, []), "ckpt.pt", [])


def test_unset_sampler_settings_follow_the_checkpoint(tmp_path, tiny_checkpoint):
    """A checkpoint carrying its release's sampler settings is sampled with them when the job config leaves
    them out, exactly as if the config had spelled them out (the same crystals, byte for byte), and the
    manifest records what ran."""
    from unimat_dist.cli import main
    from unimat_dist.inference import load_inference_checkpoint

    T = int(load_inference_checkpoint(str(tiny_checkpoint))["diffusion"]["timesteps"])
    restart = [max(T // 10, 2), 2]
    release = tmp_path / "release.pt"
    assert main(["model", "sampling", str(tiny_checkpoint), "--eta", "1", "--noise-scale", "0.5", "--restart",
                 f"{restart[0]}:{restart[1]}", "--out", str(release)]) == 0
    common = ["requests.source=list", f"requests.compositions=[{COMPOSITIONS[0]}, {COMPOSITIONS[1]}]",
              "requests.samples_per_request=2",
              "sampling.steps=4", "sampling.seed=3", "run.executor=local", "run.torch_threads=1", "output.gallery=false"]
    implicit = run_generate_batch(load_batch_config(None, common + [f"model.checkpoint={release}",
                                                                      f"output.uri={tmp_path / 'implicit'}"]))
    explicit = run_generate_batch(load_batch_config(None, common + [
        f"model.checkpoint={tiny_checkpoint}", f"output.uri={tmp_path / 'explicit'}", "sampling.eta=1",
        "sampling.noise_scale=0.5", f"sampling.restart=[{restart[0]}, {restart[1]}]"]))
    plain = run_generate_batch(load_batch_config(None, common + [f"model.checkpoint={tiny_checkpoint}",
                                                                   f"output.uri={tmp_path / 'plain'}"]))
    assert implicit.samples == explicit.samples == plain.samples == 4

    def shard_text(summary):
        m = read_generated_manifest(summary.output_uri)
        return m, "".join((Path(summary.output_uri) / s["path"]).read_text() for s in m["shards"])

    m_imp, text_imp = shard_text(implicit)
    _, text_exp = shard_text(explicit)
    _, text_plain = shard_text(plain)
    assert text_imp == text_exp != text_plain
    ran = m_imp["config"]["sampling"]
    assert (ran["sampler"], ran["eta"], ran["noise_scale"], ran["restart"]) == ("ddim", 1.0, 0.5, restart)


def test_distinct_compositions_follow_the_checkpoint_and_the_job_config(tmp_path):
    """The released Perov-5 model carries ``distinct_compositions: true``: an unconditional request of 200
    samples gets 200 different compositions from its prior; ``sampling.distinct_compositions=false`` gives
    the plain prior's draws, which repeat some (a seeded draw), and the manifest says what ran."""
    release = ROOT / "checkpoints" / "perov5_transformer_cpu.pt"
    common = [f"model.checkpoint={release}", "requests.source=unconditional", "requests.unconditional_samples=200",
              "requests.samples_per_request=200", "sampling.steps=2", "sampling.seed=4", "run.executor=local",
              "run.torch_threads=1", "output.gallery=false", "output.format=extxyz"]
    formulas = {}
    for label, extra in (("release", []), ("plain", ["sampling.distinct_compositions=false"])):
        summary = run_generate_batch(load_batch_config(None, common + extra + [f"output.uri={tmp_path / label}"]))
        assert read_generated_manifest(summary.output_uri)["config"]["sampling"]["distinct_compositions"] is (
            label == "release")
        (rec,) = read_unit_records(summary.output_uri)
        formulas[label] = Counter(f for e in rec["requests"] for f in e["formulas"])
        assert sum(formulas[label].values()) == 200 and None not in formulas[label]
    assert len(formulas["release"]) == 200
    assert len(formulas["plain"]) < 200, formulas["plain"].most_common(3)
