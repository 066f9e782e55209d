"""Checkpoints and caches written by someone else: planted pickles never run, altered bytes are refused.

Every file the project reads back is attacked where it lies: a pickle whose ``__reduce__`` would create a
marker file (the attacker also rewrites the recorded checksum, as someone with write access to the
storage can), and bytes flipped after writing. Covered: the Ray trainer's checkpoint (rank files,
DeepSpeed model and optimizer states; once through a real resume on Ray, the rest through the same
``verified_copy`` the workers call), the local trainer's step directories, inference checkpoints
(local and fsspec), the released checkpoints, and the evaluation caches.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from unimat_dist import safe_io
from unimat_dist.safe_io import IntegrityError, UnsafeFileError
from unimat_dist.ray_local import init_ray

ROOT = Path(__file__).resolve().parents[1]
RELEASED = ROOT / "checkpoints" / "perov5_transformer_cpu.pt"


class Payload:
    """Unpickling this creates ``marker`` (``open(marker, "w")``): proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(path: Path, marker: Path) -> None:
    """Overwrite a checkpoint file with a malicious pickle (a dict that looks like a state)."""
    torch.save({"train_state": Payload(marker), "weights": torch.zeros(3)}, path)


def flip(path: Path, n: int = 64, at: float = 0.5) -> None:
    """Flip ``n`` bytes in the middle of a file (inside the tensor data of a checkpoint)."""
    data = bytearray(path.read_bytes())
    start = int(len(data) * at)
    for i in range(start, start + n):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------ inference checkpoints (incl. released)
def test_inference_checkpoint_planted_pickle_altered_bytes_and_legacy(tmp_path, caplog):
    from unimat_dist.inference import load_inference_checkpoint

    marker = tmp_path / "PWNED"
    ck = tmp_path / "model.pt"
    shutil.copy(RELEASED, ck)
    shutil.copy(f"{RELEASED}.sha256", f"{ck}.sha256")
    assert load_inference_checkpoint(str(ck))["step"] == 36000  # the released sidecar matches its weights

    flip(ck)  # 64 bytes of weights
    with pytest.raises(IntegrityError, match=rf"{ck}: sha256 [0-9a-f]{{64}} does not match the recorded"):
        load_inference_checkpoint(str(ck))

    plant(ck, marker)
    safe_io.main([str(ck)])  # the attacker refreshes the sidecar as well
    with pytest.raises(UnsafeFileError, match=rf"{ck}: refused to load: it references io.open"):
        load_inference_checkpoint(str(ck))
    assert not marker.exists()

    # a checkpoint from before sidecars: loads, with a warning naming it
    shutil.copy(RELEASED, ck)
    Path(f"{ck}.sha256").unlink()
    with caplog.at_level(logging.WARNING, logger="unimat_dist.safe_io"):
        assert load_inference_checkpoint(str(ck))["step"] == 36000
    assert f"{ck}: no sha256 sidecar" in caplog.text and "UNVERIFIED" in caplog.text


def test_inference_checkpoint_on_fsspec_storage(tmp_path):
    import fsspec

    from unimat_dist.inference import load_inference_checkpoint, save_inference_checkpoint
    from unimat_dist.inference.checkpoint import load_torch

    payload = torch.load(RELEASED, weights_only=True)
    uri = "memory://hostile/run/inference.pt"
    save_inference_checkpoint(payload, uri)
    fs = fsspec.filesystem("memory")
    side = fs.cat_file("/hostile/run/inference.pt.sha256").decode()
    assert side == f"{safe_io.sha256_bytes(fs.cat_file('/hostile/run/inference.pt'))}  inference.pt\n"
    assert load_inference_checkpoint(uri)["step"] == 36000

    data = bytearray(fs.cat_file("/hostile/run/inference.pt"))
    data[len(data) // 2] ^= 1
    fs.pipe_file("/hostile/run/inference.pt", bytes(data))
    with pytest.raises(IntegrityError, match=r"memory://hostile/run/inference.pt: sha256 .* does not match"):
        load_inference_checkpoint(uri)

    marker = tmp_path / "PWNED"
    plant(tmp_path / "evil.pt", marker)
    evil = (tmp_path / "evil.pt").read_bytes()
    fs.pipe_file("/hostile/run/evil.pt", evil)
    fs.pipe_file("/hostile/run/evil.pt.sha256", safe_io.sidecar_text(safe_io.sha256_bytes(evil), "evil.pt").encode())
    with pytest.raises(UnsafeFileError, match=r"memory://hostile/run/evil.pt: refused to load"):
        load_torch("memory://hostile/run/evil.pt")
    assert not marker.exists()


# ------------------------------------------------------------------ local trainer step directories
def test_local_trainer_checkpoint(tmp_path, caplog):
    from unimat_dist.training.checkpoint import COMPLETE_FILE, STATE_FILE, CheckpointManager, RNGState

    marker = tmp_path / "PWNED"
    model = torch.nn.Linear(3, 2)
    mgr = CheckpointManager(str(tmp_path / "ckpts"))
    d = Path(mgr.save(4, {"model": model, "rng": RNGState()}, inference=torch.load(RELEASED, weights_only=True)))
    complete = json.loads((d / COMPLETE_FILE).read_text())
    assert complete["checksums"] is True and complete["step"] == 4
    assert complete["sha256"][STATE_FILE] == safe_io.sha256_file(str(d / STATE_FILE))
    restored = torch.nn.Linear(3, 2)
    mgr.load(str(d), {"model": restored, "rng": RNGState()})
    assert torch.equal(restored.weight, model.weight)

    # the inference file of a step directory is verified through COMPLETE too
    from unimat_dist.inference import load_inference_checkpoint

    assert load_inference_checkpoint(str(tmp_path / "ckpts"))["path"] == f"{d}/inference.pt"
    original = (d / STATE_FILE).read_bytes()
    flip(d / STATE_FILE, n=8, at=0.8)
    with pytest.raises(IntegrityError, match=rf"{d / STATE_FILE}: sha256 .* does not match the recorded"):
        mgr.load(str(d), {"model": restored, "rng": RNGState()})

    plant(d / STATE_FILE, marker)
    complete["sha256"][STATE_FILE] = safe_io.sha256_file(str(d / STATE_FILE))  # attacker updates the record
    (d / COMPLETE_FILE).write_text(json.dumps(complete))
    with pytest.raises(UnsafeFileError, match=rf"{d / STATE_FILE}: refused to load"):
        mgr.load(str(d), {"model": restored, "rng": RNGState()})
    assert not marker.exists()

    # the record cannot be dropped for one file: a digest is required once COMPLETE says "checksums"
    del complete["sha256"][STATE_FILE]
    (d / COMPLETE_FILE).write_text(json.dumps(complete))
    with pytest.raises(IntegrityError, match=rf"{d / STATE_FILE}: no sha256 recorded"):
        mgr.load(str(d), {"model": restored, "rng": RNGState()})

    # a step directory of an earlier version (COMPLETE = "4\n"): loads, unverified, with a warning
    (d / STATE_FILE).write_bytes(original)
    (d / COMPLETE_FILE).write_text("4\n")
    assert mgr.latest() == str(d)
    with caplog.at_level(logging.WARNING, logger="unimat_dist.safe_io"):
        mgr.load(str(d), {"model": restored, "rng": RNGState()})
    assert f"{d / STATE_FILE}: no sha256 sidecar" in caplog.text


# ------------------------------------------------------------------ evaluation caches
def test_evaluation_caches_never_unpickle(bundled, tmp_path, monkeypatch, caplog):
    import pickle

    from unimat_dist.evaluation.feature_cache import analyse_set, features_from_json, features_to_json
    from unimat_dist.evaluation.proxy import _reference_property

    monkeypatch.setenv("UNIMAT_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "PWNED"
    src = bundled["perov_5"]["test"]
    # fingerprints off keeps this fast (CrystalNN's set-up alone takes ~13 s); they round-trip below
    kw = dict(niggli=True, fingerprints=False, keep_structures=True, limit=3, workers=1, progress=False)
    first, info = analyse_set(src, **kw)
    cache = Path(info["cache_file"])
    assert cache.suffix == ".json" and not info["cache_hit"]
    again, info2 = analyse_set(src, **kw)
    assert info2["cache_hit"] and [f.id for f in again] == [f.id for f in first]
    for a, b in zip(first, again):  # JSON round trip is exact
        assert a.structure == b.structure and a.structure.lattice == b.structure.lattice
        assert a.density == b.density and a.valid == b.valid and a.formula == b.formula
    fp = dataclasses.replace(first[0], struct_fp=np.array([0.1, np.nan, 1 / 3]), comp_fp=np.arange(4.0) / 7)
    (back,) = features_from_json(json.loads(json.dumps(features_to_json([fp]))), "roundtrip")
    assert np.array_equal(back.struct_fp, fp.struct_fp, equal_nan=True) and np.array_equal(back.comp_fp, fp.comp_fp)

    # a planted pickle where the earlier version kept its cache, and pickle bytes in the JSON entry
    legacy = cache.with_suffix(".pkl")
    legacy.write_bytes(pickle.dumps(Payload(marker)))
    cache.write_bytes(pickle.dumps(Payload(marker)))
    with caplog.at_level(logging.WARNING, logger="unimat_dist.evaluation"):
        third, info3 = analyse_set(src, **kw)
    assert not marker.exists()
    assert not info3["cache_hit"] and [f.id for f in third] == [f.id for f in first]
    assert f"{legacy}: not loading this pickle cache" in caplog.text
    assert f"{cache}: ignoring unreadable cache entry" in caplog.text
    assert json.loads(cache.read_text())["format"] == "unimat-dist/features-v1"  # recomputed, rewritten

    def density(structs):
        return [s.density for s in structs]

    ref_info = {"sha256": info["sha256"], "cache_file": info["cache_file"]}
    values = _reference_property(first, ref_info, density, "density", True)
    (prop,) = (tmp_path / "cache" / "eval" / "properties").glob("*.json")
    assert json.loads(prop.read_text()) == values
    prop.with_suffix(".pkl").write_bytes(pickle.dumps(Payload(marker)))
    prop.write_bytes(pickle.dumps(Payload(marker)))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="unimat_dist.evaluation"):
        assert _reference_property(first, ref_info, density, "density", True) == values
    assert not marker.exists()
    assert f"{prop.with_suffix('.pkl')}: not loading this pickle cache" in caplog.text
    assert f"{prop}: ignoring unreadable property cache" in caplog.text


# ------------------------------------------------------------------ Ray trainer + DeepSpeed
CONFIG = ROOT / "cluster" / "jobs" / "train_tiny_ray_cpu.yaml"
COMMON = [
    "train.ckpt_every=2", "train.val_every=0", "train.log_every=1", "train.val_batches=1",
    "train.global_batch_size=8", "train.micro_batch_size=4", "optim.warmup_steps=1", "data.limit_train=32",
    "data.limit_val=8", "distributed.metrics_port=null", "distributed.max_failures=0",
]


@pytest.fixture(scope="module")
def ray_run(tmp_path_factory):
    """A 2-worker ZeRO-2 run of 4 steps (checkpoints at 2 and 4) and a pristine copy of its last checkpoint.

    A clean resume through the verification is exercised by test_distributed_training (killed worker,
    ZeRO-3 on fewer workers); here only the refused one runs on Ray, the rest calls ``verified_copy``."""
    import ray

    from unimat_dist.launch import run_training

    from unimat_dist.training import load_train_config

    root = tmp_path_factory.mktemp("hostile")
    out = root / "run"

    def cfg(steps: int):
        return load_train_config(CONFIG, [*COMMON, f"out_dir={out}", f"train.steps={steps}"])

    init_ray("local", num_cpus=2, log_to_driver=False)
    try:
        result = run_training(cfg(4))
        shutil.copytree(_latest(out), root / "pristine")
        yield {"out": out, "cfg": cfg, "result": result, "run_training": run_training, "pristine": root / "pristine"}
    finally:
        ray.shutdown()


def _latest(out: Path) -> Path:
    ckpts = [p for p in (out / "ray" / "run").glob("checkpoint_*") if (p / "meta.json").is_file()]
    return max(ckpts, key=lambda p: json.loads((p / "meta.json").read_text())["step"])


def test_ray_checkpoint_records_checksums(ray_run, tmp_path):
    from unimat_dist.inference import load_inference_checkpoint

    assert ray_run["result"].steps == 4
    # out_dir's inference.pt (copied there with meta.json by the launcher) is verified through meta.json
    out = ray_run["out"]
    assert json.loads((out / "meta.json").read_text())["sha256"]["inference.pt"] == \
        safe_io.sha256_file(str(out / "inference.pt"))
    assert load_inference_checkpoint(str(out))["step"] == 4
    for name in ("inference.pt", "meta.json"):
        shutil.copy(out / name, tmp_path / name)
    flip(tmp_path / "inference.pt", n=8, at=0.7)
    with pytest.raises(IntegrityError, match=rf"{tmp_path / 'inference.pt'}: sha256 .* does not match"):
        load_inference_checkpoint(str(tmp_path / "inference.pt"))

    ckpt = ray_run["pristine"]
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["checksums"] == 1 and meta["step"] == 4 and meta["world_size"] == 2
    lists = {r: safe_io.read_checksums(str(ckpt / f"sha256_rank_0000{r}.json")) for r in (0, 1)}
    assert {"rank_00000.pt", "meta.json", "inference.pt", "deepspeed/state/mp_rank_00_model_states.pt",
            "deepspeed/state/zero_pp_rank_0_mp_rank_00_optim_states.pt"} <= set(lists[0])
    assert {"rank_00001.pt", "deepspeed/state/zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= set(lists[1])
    for sums in lists.values():
        for rel, digest in sums.items():
            assert safe_io.sha256_file(str(ckpt / rel)) == digest, rel


def test_planted_rank_file_stops_a_ray_resume(ray_run):
    """End to end: a malicious rank file (with its checksum rewritten) in the run's storage; resuming the
    run fails with an error naming the file, and the payload never ran on any worker."""
    ckpt = _latest(ray_run["out"])
    marker = ray_run["out"].parent / "PWNED_rank"
    target = ckpt / "rank_00001.pt"
    plant(target, marker)
    lst = ckpt / "sha256_rank_00001.json"
    data = json.loads(lst.read_text())
    data["files"]["rank_00001.pt"] = safe_io.sha256_file(str(target))
    data["sizes"]["rank_00001.pt"] = target.stat().st_size  # a consistent forgery, not a torn copy
    lst.write_text(json.dumps(data))
    # Ray shortens a worker's traceback in the middle: the message ends with the file's name for that reason
    expected = rf"UnsafeFileError.*it references io\.open.*File: \S*{ckpt.name}/rank_00001\.pt"
    with pytest.raises(Exception, match=expected):
        ray_run["run_training"](ray_run["cfg"](6))
    assert not marker.exists()


def test_torn_checkpoint_is_skipped_for_the_one_before(ray_run, tmp_path, caplog):
    """A rank whose node dies while Ray copies its files into storage leaves a torn checkpoint (a file cut
    short or missing, never registered by Ray). Resuming takes the newest checkpoint written whole."""
    from unimat_dist.training.deepspeed_checkpoint import latest_complete

    run = tmp_path / "storage" / "run"
    shutil.copytree(ray_run["pristine"], run / "checkpoint_a")  # step 4
    newer = run / "checkpoint_b"
    shutil.copytree(ray_run["pristine"], newer)
    meta = json.loads((newer / "meta.json").read_text())
    (newer / "meta.json").write_text(json.dumps({**meta, "step": 6}))
    lst = newer / "sha256_rank_00000.json"
    data = json.loads(lst.read_text())
    data["files"]["meta.json"] = safe_io.sha256_file(str(newer / "meta.json"))
    data["sizes"]["meta.json"] = (newer / "meta.json").stat().st_size
    lst.write_text(json.dumps(data))
    assert latest_complete(str(tmp_path / "storage"), "run")[1]["step"] == 6  # whole: the newest resumes

    rel = "deepspeed/state/zero_pp_rank_1_mp_rank_00_optim_states.pt"
    full = (newer / rel).stat().st_size
    with open(newer / rel, "r+b") as fh:  # the copy stopped half way
        fh.truncate(full // 2)
    with caplog.at_level(logging.WARNING, logger="unimat_dist.training.deepspeed_checkpoint"):
        uri, found = latest_complete(str(tmp_path / "storage"), "run")
        assert Path(uri).name == "checkpoint_a" and found["step"] == 4
        assert f"{rel} has {full // 2} bytes, rank 1 wrote {full}" in caplog.text
        (newer / "sha256_rank_00001.json").unlink()  # rank 1's list never arrived
        assert Path(latest_complete(str(tmp_path / "storage"), "run")[0]).name == "checkpoint_a"
        assert "sha256_rank_00001.json is missing" in caplog.text


@pytest.fixture()
def ckpt_copy(ray_run, tmp_path):
    """A copy of the run's pristine step-4 checkpoint, to tamper with."""
    dst = tmp_path / "ckpt"
    shutil.copytree(ray_run["pristine"], dst)
    return dst


def _resign(ckpt: Path, rel: str) -> None:
    """What an attacker with write access does after replacing a file: update its checksum entry."""
    for lst in ckpt.glob("sha256_rank_*.json"):
        data = json.loads(lst.read_text())
        if rel in data["files"]:
            data["files"][rel] = safe_io.sha256_file(str(ckpt / rel))
            lst.write_text(json.dumps(data))


@pytest.mark.parametrize("rel", [
    "rank_00000.pt",
    "inference.pt",
    "deepspeed/state/mp_rank_00_model_states.pt",
    "deepspeed/state/zero_pp_rank_1_mp_rank_00_optim_states.pt",
])
def test_planted_pickles_in_a_ray_checkpoint_never_run(ckpt_copy, tmp_path, rel):
    from unimat_dist.training.deepspeed_checkpoint import _WeightsOnlyCheckpointEngine, verified_copy

    marker = tmp_path / "PWNED"
    assert verified_copy(ckpt_copy, tmp_path / "ok")["step"] == 4  # the pristine copy verifies
    pristine = _WeightsOnlyCheckpointEngine(None).load(str(ckpt_copy / rel), map_location="cpu")
    assert isinstance(pristine, dict) and pristine  # DeepSpeed's real files pass the allow-list
    plant(ckpt_copy / rel, marker)
    _resign(ckpt_copy, rel)
    with pytest.raises(UnsafeFileError, match=rf"{ckpt_copy / rel}: refused to load: .*io\.open"):
        verified_copy(ckpt_copy, tmp_path / "v")
    # and DeepSpeed's own loads go through the weights-only engine, should a file reach them unchecked
    with pytest.raises(UnsafeFileError, match=rf"{ckpt_copy / rel}: refused to load"):
        _WeightsOnlyCheckpointEngine(None).load(str(ckpt_copy / rel), map_location="cpu")
    assert not marker.exists()


def test_altered_or_unlisted_ray_checkpoint_files_are_refused(ckpt_copy, tmp_path, caplog):
    from unimat_dist.training.deepspeed_checkpoint import verified_copy

    optim = ckpt_copy / "deepspeed/state/zero_pp_rank_0_mp_rank_00_optim_states.pt"
    original = optim.read_bytes()
    flip(optim, n=64, at=0.6)
    with pytest.raises(IntegrityError, match=rf"{optim}: sha256 .* does not match the recorded"):
        verified_copy(ckpt_copy, tmp_path / "a")
    optim.write_bytes(original)

    # removing a rank's checksum list does not downgrade the check
    lst1 = ckpt_copy / "sha256_rank_00001.json"
    saved = lst1.read_bytes()
    lst1.unlink()
    with pytest.raises(IntegrityError, match=r"checksum list\(s\) \['sha256_rank_00001.json'\] missing"):
        verified_copy(ckpt_copy, tmp_path / "b")
    lst1.write_bytes(saved)

    # a .pt file nobody listed is refused
    shutil.copy(ckpt_copy / "rank_00000.pt", ckpt_copy / "deepspeed/state/extra.pt")
    with pytest.raises(IntegrityError, match=r"extra.pt: no sha256 recorded"):
        verified_copy(ckpt_copy, tmp_path / "c")
    (ckpt_copy / "deepspeed/state/extra.pt").unlink()

    # a checkpoint from before checksums (no lists, no flag) still resumes, with a warning
    for p in ckpt_copy.glob("sha256_rank_*.json"):
        p.unlink()
    meta = json.loads((ckpt_copy / "meta.json").read_text())
    del meta["checksums"]
    (ckpt_copy / "meta.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="unimat_dist.training.deepspeed_checkpoint"):
        assert verified_copy(ckpt_copy, tmp_path / "d")["step"] == 4
    assert "written without checksums" in caplog.text and "UNVERIFIED" in caplog.text
    assert (tmp_path / "d" / "deepspeed/state/mp_rank_00_model_states.pt").read_bytes() == \
        (ckpt_copy / "deepspeed/state/mp_rank_00_model_states.pt").read_bytes()
