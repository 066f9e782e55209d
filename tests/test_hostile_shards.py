"""Shards altered after ingest are refused before any of their samples reach the model.

Policy under test: a shard whose size or sha256 differs from the manifest stops the reader with
``ShardIntegrityError`` naming the shard, *before* its first sample is yielded - also when the reader
would stop early (batch windows, shuffle buffers, a validation limit), which is how tampered shards
used to train unnoticed. Training stops rather than skipping the shard (see ``unimat_dist.shards.reader``).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from data_pipeline.config import IngestConfig
from data_pipeline.job import run_ingest
from unimat_dist.shards import iter_samples, open_shards, read_manifest
from unimat_dist.shards.reader import ShardIntegrityError
from unimat_dist.training.shard_source import ShardSource, encoded_from_shards

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def perov(tmp_path_factory):
    """Perov-5 (bundled val and test splits, first 96 records) ingested into shards of 8 samples; the bundled
    data have no train split, so val trains."""
    out = tmp_path_factory.mktemp("perov") / "ds"
    cfg = IngestConfig()
    cfg.source.format, cfg.source.dataset, cfg.source.limit = "cdvae-csv", "perov_5", 96
    cfg.output.uri, cfg.output.records_per_unit = str(out), 8
    cfg.run.executor = "local"
    run_ingest(cfg)
    return out


@pytest.fixture()
def ds(perov, tmp_path):
    copy = tmp_path / "ds"
    shutil.copytree(perov, copy)
    return copy


def tamper(path: Path) -> None:
    """Change a digit of every ``heat_ref`` property value in a shard (same size; the samples still decode,
    with different training targets): only the checksum can tell."""
    data = bytearray(path.read_bytes())
    key, pos, n = b'"heat_ref":', 0, 0
    while (pos := data.find(key, pos)) >= 0:
        i = pos + len(key)
        while not chr(data[i]).isdigit():
            i += 1
        data[i] = ord("7") if data[i] != ord("7") else ord("3")
        pos, n = i, n + 1
    assert n > 0
    path.write_bytes(bytes(data))


def _shard_ids(ds: Path, shard) -> set[str]:
    from unimat_dist.shards.reader import StreamPlan, StreamReader
    from unimat_dist.shards.sample_format import unpack_sample

    m = read_manifest(str(ds))
    reader = StreamReader(m.properties, 1, 0, None, verify_checksums=True)
    plan = StreamPlan((m.shard_uri(shard),), (shard,), 0, 0, (0,))
    return {unpack_sample(x)["meta"]["id"] for x in reader.samples(plan)}


def test_tampered_shard_stops_the_loader_before_its_samples_are_used(ds):
    m = read_manifest(str(ds))
    shards = m.shards_of("val")
    assert len(shards) >= 4
    loader = open_shards(str(ds), "val", m.spec, batch_size=4, shuffle_buffer=4)
    order = [s.path for s in loader.shards]
    victim = next(s for s in shards if s.path == order[1])  # the second shard this rank reads
    bad_ids = _shard_ids(ds, victim)
    tamper(ds / victim.path)
    assert (ds / victim.path).stat().st_size == victim.bytes  # same size: only the checksum can tell

    seen: list[str] = []
    with pytest.raises(ShardIntegrityError, match=rf"{ds / victim.path}: shard refused, sha256 mismatch") as exc:
        for batch in open_shards(str(ds), "val", m.spec, batch_size=4, shuffle_buffer=4):
            seen += batch["id"]
    assert f"manifest's {victim.sha256}" in str(exc.value) and "re-ingest" in str(exc.value)
    assert seen and not set(seen) & bad_ids  # the first shard was used, nothing of the tampered one
    # opting out of verification reads it (and so would have trained on it)
    relaxed = open_shards(str(ds), "val", m.spec, batch_size=4, shuffle_buffer=4, verify_checksums=False)
    assert bad_ids <= {i for b in relaxed for i in b["id"]}


def test_every_tampered_shard_is_refused_by_the_trainers_source(ds):
    """ShardSource (what the local and the Ray trainer stream) with a shuffle buffer of 16 and a batch
    window shorter than a shard: the first batch already fails."""
    m = read_manifest(str(ds))
    for s in m.shards_of("val"):
        tamper(ds / s.path)
    source = ShardSource(m, "val", 4, seed=0, rank=1, world_size=2, shuffle_buffer=16)
    with pytest.raises(ShardIntegrityError, match=r"shard refused, sha256 mismatch"):
        next(iter(source))
    assert source.consumed == 0


def test_validation_limit_and_truncation_are_no_way_around(ds):
    m = read_manifest(str(ds))
    first = m.shards_of("test")[0]
    tamper(ds / first.path)
    with pytest.raises(ShardIntegrityError, match=rf"{first.path}: shard refused"):
        encoded_from_shards(m, "test", limit=2)  # reads 2 samples of the first shard: still verified whole
    # a truncated shard (a partial upload) names the size too
    val0 = m.shards_of("val")[0]
    data = (ds / val0.path).read_bytes()
    (ds / val0.path).write_bytes(data[: len(data) // 2])
    sizes = rf"\({len(data) // 2} bytes\) does not match .*\({val0.bytes} bytes\)"
    with pytest.raises(ShardIntegrityError, match=sizes):
        list(iter_samples(m, "val"))


def test_local_training_on_a_tampered_shard_fails_without_a_checkpoint(ds, tmp_path):
    from unimat_dist.launch import run_training
    from unimat_dist.training import load_train_config

    m = read_manifest(str(ds))
    for s in m.shards_of("val"):
        tamper(ds / s.path)
    out = tmp_path / "run"
    cfg = load_train_config(ROOT / "cluster" / "jobs" / "train_tiny_cpu.yaml", [
        f"out_dir={out}", f"data.manifest={ds}", "data.train_split=val", "data.val_split=test", "data.properties=[]",
        "data.shuffle_buffer=16", "train.steps=2", "train.ckpt_every=1", "train.val_every=0",
        "train.global_batch_size=4", "train.num_threads=1",
    ])
    with pytest.raises(ShardIntegrityError, match=r"shard refused, sha256 mismatch"):
        run_training(cfg)
    assert not list(out.rglob("*.pt"))
