"""End to end on a real Ray cluster (2 CPUs): ingest the bundled CDVAE data sets and the GNoME-format
fixture into file://, s3:// (moto server) and gs:// (GCS emulator), read the shards back through the
same URIs, and check that every sample decodes to its source and the manifest's counts add up."""
from __future__ import annotations

import pytest

from data_pipeline.config import IngestConfig
from data_pipeline.job import run_ingest
from shard_checks import GNOME_MINI, cdvae_sources, check_dataset, gnome_sources, quarantine_lines
from storage_emulators import gcs_emulator, s3_emulator  # noqa: F401 (fixtures)
from tests_expectations import GNOME_MINI_BAD, GNOME_MINI_GOOD
from unimat_dist.shards import open_shards, read_manifest
from unimat_dist.storage import read_bytes
from unimat_dist.ray_local import init_ray

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    import ray

    init_ray("local", num_cpus=2, log_to_driver=False)
    yield
    ray.shutdown()


def _config(dataset: str, output: str, storage_options: dict, limit: int | None = None,
            records_per_unit: int = 1000) -> IngestConfig:
    cfg = IngestConfig()
    if dataset == "gnome":
        cfg.source.format, cfg.source.uri = "gnome", str(GNOME_MINI)
        cfg.spec.max_atoms_per_element = 20
        cfg.output.records_per_unit = 6
        cfg.split.fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    else:
        cfg.source.format, cfg.source.dataset, cfg.source.limit = "cdvae-csv", dataset, limit
        cfg.output.records_per_unit = records_per_unit
    cfg.output.uri, cfg.output.storage_options = output, storage_options
    cfg.run.executor = "ray"
    return cfg


EXPECTED_SPEC = {"mp_20": (20, None), "perov_5": (3, None), "carbon_24": (24, ["C"]), "gnome": (20, None)}


def _check(dataset: str, uri: str, opts: dict, limit: int | None, records_per_unit: int = 1000):
    summary = run_ingest(_config(dataset, uri, opts, limit, records_per_unit))
    manifest = read_manifest(uri, opts)
    raw = manifest.raw
    L, elements = EXPECTED_SPEC[dataset]
    assert raw["spec"]["max_atoms_per_element"] == L and raw["spec"]["elements"] == elements
    if dataset == "gnome":
        sources = gnome_sources()
        counts = check_dataset(uri, sources, storage_options=opts)
        assert summary.read == len(sources) == GNOME_MINI_GOOD + sum(GNOME_MINI_BAD.values())
        assert summary.written == GNOME_MINI_GOOD and raw["counts"]["quarantined_by_reason"] == GNOME_MINI_BAD
        lines = quarantine_lines(uri, raw, opts)
        assert sorted(q["reason"] for q in lines) == sorted(r for r, n in GNOME_MINI_BAD.items() for _ in range(n))
        assert all(q["id"] in sources for q in lines)
        assert raw["split_policy"]["mode"] == "composition"
        assert {"band_gap", "formation_energy_per_atom", "decomposition_energy_per_atom"} <= set(raw["properties"])
    else:
        sources = cdvae_sources(dataset, limit)
        counts = check_dataset(uri, sources, key=lambda m: f"{m['split']}/{m['id']}", storage_options=opts)
        assert summary.read == summary.written == len(sources) and summary.quarantined == 0
        expected = {}
        for key in sources:
            expected[key.split("/")[0]] = expected.get(key.split("/")[0], 0) + 1
        assert dict(counts) == expected == manifest.split_counts
        assert raw["split_policy"]["mode"] == "source"
        assert raw["normalizer_fit_split"] == ("train" if "train" in expected else "all")
    assert raw["counts"]["read"] == raw["counts"]["written"] + raw["counts"]["quarantined"]
    assert sum(s["samples"] for s in raw["shards"]) == raw["counts"]["written"]
    assert raw["normalizer"]["lattice_std"] and all(v > 0 for v in raw["normalizer"]["lattice_std"])
    return manifest


@pytest.mark.parametrize("dataset", ["mp_20", "perov_5", "carbon_24", "gnome"])
def test_ingest_to_local_files(tmp_path, dataset):
    """Full bundled data sets (12,746 CDVAE structures) and the GNoME fixture on file://."""
    _check(dataset, f"file://{tmp_path}/ds", {}, None)


@pytest.mark.parametrize("dataset", ["mp_20", "perov_5", "carbon_24", "gnome"])
@pytest.mark.parametrize("backend", ["s3", "gs"])
def test_ingest_to_cloud_emulators(request, backend, dataset):
    emu = request.getfixturevalue("s3_emulator" if backend == "s3" else "gcs_emulator")
    uri = emu.uri(f"ds-{dataset}")
    manifest = _check(dataset, uri, emu.storage_options, limit=None if dataset in ("mp_20", "gnome") else 200,
                      records_per_unit=100)
    # the trainer's reader streams the same URIs: two ranks with two DataLoader workers each
    split = "train" if "train" in manifest.split_counts else "val"
    seen = []
    lens = []
    for rank in range(2):
        loader = open_shards(uri, split, manifest.spec, rank=rank, world_size=2, batch_size=16, shuffle_buffer=64,
                             num_workers=2, even_batches=False, storage_options=emu.storage_options)
        batches = list(loader)
        lens.append(len(batches))
        assert len(batches) == len(loader)
        seen += [i for b in batches for i in b["id"]]
    assert len(seen) == len(set(seen)) == manifest.split_counts[split]


def test_manifest_is_written_last_and_lists_only_committed_shards(s3_emulator):
    uri = s3_emulator.uri("ds-order")
    run_ingest(_config("mp_20", uri, s3_emulator.storage_options, limit=50))
    import s3fs

    fs = s3fs.S3FileSystem(**s3_emulator.storage_options, skip_instance_cache=True)
    root = uri[len("s3://"):]
    files = {p[len(root) + 1:]: fs.info(p)["LastModified"] for p in fs.find(root)}
    manifest = read_manifest(uri, s3_emulator.storage_options)
    listed = {s.path for s in manifest.shards}
    assert listed == {p for p in files if p.endswith(".tar")}
    assert all(files["manifest.json"] >= t for t in files.values())
    assert read_bytes(uri + "/_job.json", s3_emulator.storage_options)


def test_gnome_release_read_from_a_gcs_bucket(gcs_emulator, tmp_path):
    """The real use: the release sits in a bucket; CSV ranges stream from it, the zip is staged per node."""
    import gcsfs

    fs = gcsfs.GCSFileSystem(**gcs_emulator.storage_options, skip_instance_cache=True)
    for f in GNOME_MINI.iterdir():
        fs.put_file(str(f), f"{gcs_emulator.bucket}/release/gnome_data/{f.name}")
    cfg = _config("gnome", str(tmp_path / "from-gcs"), {})
    cfg.source.uri = gcs_emulator.uri("release")  # the folder above gnome_data/, as in the bucket
    cfg.source.storage_options = gcs_emulator.storage_options
    cfg.run.scratch_dir = str(tmp_path / "scratch")
    summary = run_ingest(cfg)
    assert summary.written == GNOME_MINI_GOOD and summary.quarantined_by_reason == GNOME_MINI_BAD
    check_dataset(str(tmp_path / "from-gcs"), gnome_sources())
    assert len(list((tmp_path / "scratch" / "unimat-archives").glob("*-by_id.zip"))) == 1
