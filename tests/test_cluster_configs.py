"""The cluster-side files (Ray cluster launcher YAML, KubeRay manifests, job configs) are valid as far as
can be checked without a cloud: Ray's own autoscaler schema, referenced files exist, job configs load,
versions agree with the installed Ray."""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import ray
import yaml

from unimat_dist.training import load_train_config

ROOT = Path(__file__).resolve().parents[1]


def test_aws_cluster_launcher_yaml_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((ROOT / "cluster" / "aws-gpu.yaml").read_text())
    validate_config(prepare_config(cfg))  # Ray's ray-schema.json after Ray fills its defaults (no cloud call)
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types and types[cfg["head_node_type"]]["resources"] == {"CPU": 0}
    gpu = [t for t in types.values() if t["node_config"]["InstanceType"].startswith(("p4", "p5", "g5"))]
    assert gpu and all(t["max_workers"] > t["min_workers"] for t in gpu)  # autoscaling GPU workers
    # every node runs the image of the repository's Dockerfile (Ray, CUDA torch, DeepSpeed, this package):
    # nothing left to install, so `unimat` / `python -m unimat_dist` exist on every node (tests/test_docker_image.py)
    assert cfg["docker"]["image"] and cfg["docker"]["container_name"] and not cfg.get("setup_commands")


IMAGE_WORKDIR = "/home/ray/unimat-dist"  # the Dockerfile's WORKDIR: the repository inside the image


def _entry_config(entrypoint: str) -> Path:
    args = shlex.split(entrypoint)
    assert args[:3] == ["python", "-m", "unimat_dist"] and "--config" in args
    inside = args[args.index("--config") + 1]
    assert inside.startswith(IMAGE_WORKDIR + "/"), inside  # absolute: the job's cwd is not the WORKDIR
    path = ROOT / inside.removeprefix(IMAGE_WORKDIR + "/")
    assert path.exists(), path
    return path


@pytest.mark.parametrize("name", ["rayjob-train.yaml", "rayjob-ingest.yaml"])
def test_kuberay_rayjobs(name):
    doc = yaml.safe_load((ROOT / "cluster" / "kuberay" / name).read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    spec = doc["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    images = {c["image"] for c in cluster["headGroupSpec"]["template"]["spec"]["containers"]}
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        images |= {c["image"] for c in group["template"]["spec"]["containers"]}
    assert len(images) == 1  # head and workers run the same image (the repository's Dockerfile)
    assert (ROOT / "Dockerfile").exists()
    path = _entry_config(spec["entrypoint"])
    if name == "rayjob-train.yaml":
        cfg = load_train_config(path)
        assert cfg.trainer == "ray" and cfg.distributed.use_gpu
        gpus = {int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
                for g in cluster["workerGroupSpecs"]}
        max_gpus = sum(int(g["maxReplicas"]) * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
                       for g in cluster["workerGroupSpecs"])
        assert gpus and max_gpus >= cfg.distributed.num_workers
    else:
        from data_pipeline.config import IngestConfig
        from unimat_dist.config import load_config

        assert load_config(IngestConfig, path).run.executor == "ray"


def test_every_shipped_training_config_loads_and_fits_its_world_sizes():
    from unimat_dist.training.deepspeed_engine import deepspeed_config
    from unimat_dist.training.distributed_config import batch_plan

    for path in sorted((ROOT / "cluster" / "jobs").glob("train_*.yaml")):
        cfg = load_train_config(path)
        for world, micro, accum in batch_plan(cfg):
            assert world * micro * accum == cfg.train.global_batch_size, path
        if cfg.trainer == "ray":
            ds = deepspeed_config(cfg, world_size=cfg.distributed.num_workers,
                                  device_type="cuda" if cfg.distributed.use_gpu else "cpu")
            assert ds["train_batch_size"] == cfg.train.global_batch_size


def test_bf16_on_cpu_is_said_once_per_process(caplog):
    """The config check, the DeepSpeed config and the engine each resolve the precision: a CPU run asking
    for bf16 reads the slow-CPU warning once, not once per call."""
    import logging

    from unimat_dist.training import engine
    from unimat_dist.training.deepspeed_engine import deepspeed_config

    cfg = load_train_config(ROOT / "cluster" / "jobs" / "results" / "perov5_transformer_cpu.yaml",
                            ["trainer=ray", "distributed.num_workers=2", "distributed.precision=bf16",
                             "train.global_batch_size=64"])
    engine._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger=engine.__name__):
        for _ in range(3):
            assert deepspeed_config(cfg, world_size=2, device_type="cpu")["torch_autocast"]["dtype"] == "bfloat16"
        assert engine.resolve_autocast("bf16", "cpu") is not None
    assert [r.getMessage() for r in caplog.records].count(
        "bf16 autocast on CPU is slow on most CPUs; precision=fp32 is the CPU default") == 1
