"""Distributed-training benchmarks (issue 7), each ratio measured against a baseline in the same process.

1. Overhead: steady-state samples/s of Ray Train + DeepSpeed ZeRO-2 with 1 worker vs the plain local
   loop (same model, batch, threads, data), and the ratio. Goal on CPU: <= 10 % overhead.
2. Memory: per-rank bytes of parameters + optimizer state (master copies + Adam moments) for ZeRO 1/2/3
   with 2 workers vs 1 rank without ZeRO, and each process's RSS. Expect ~1/N of the optimizer state
   from stage 1 on and ~1/N of the parameters at stage 3.
3. On a GPU machine (``--gpu``): samples/s and model-FLOPs utilisation of the ``base`` and ``large``
   presets with ZeRO-2/3 in bf16, with the card's name.

    python bench/bench_distributed.py [--preset tiny] [--steps 60] [--memory-preset small]
    python bench/bench_distributed.py --gpu --skip-memory      # on a GPU machine (not run in this repo yet)

Writes bench/results/distributed_<cpu|gpu>.json and prints the results.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "cluster" / "jobs" / "train_tiny_ray_cpu.yaml"


def steady_rate(out: Path, skip: int) -> float:
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if '"samples_per_s"' in ln]
    rates = [r["samples_per_s"] for r in recs if r["step"] > skip]
    return statistics.median(rates)


def overhead(preset: str, steps: int, batch: int) -> dict:
    from unimat_dist.launch import run_training
    from unimat_dist.training import load_train_config

    common = [
        f"model.preset={preset}", f"train.steps={steps}", f"train.global_batch_size={batch}", "train.log_every=5",
        "train.val_every=0", f"train.ckpt_every={steps}", "train.num_threads=1", "data.limit_train=512",
        "data.limit_val=16", "train.val_batches=1", "distributed.num_workers=1", "distributed.zero_stage=2",
        "distributed.metrics_port=null",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        run_training(load_train_config(CONFIG, [*common, "trainer=local", f"out_dir={tmp}/local"]))
        t_local = time.time() - t0
        t0 = time.time()
        run_training(load_train_config(CONFIG, [*common, "trainer=ray", f"out_dir={tmp}/ray"]))
        t_ray = time.time() - t0
        local, ray_rate = steady_rate(Path(tmp) / "local", 10), steady_rate(Path(tmp) / "ray", 10)
    return {
        "preset": preset, "steps": steps, "global_batch": batch,
        "local_samples_per_s": round(local, 2), "ray_deepspeed_samples_per_s": round(ray_rate, 2),
        "ratio": round(ray_rate / local, 3), "overhead_percent": round(100 * (1 - ray_rate / local), 1),
        "wall_s_local": round(t_local, 1), "wall_s_ray_including_startup": round(t_ray, 1),
    }


def _memory_worker(cfg: dict) -> dict:
    """Ray Train worker: build the model, one DeepSpeed step, count what this rank holds."""
    import psutil
    import ray.train
    import torch

    from unimat_dist.config import from_dict
    from unimat_dist.training.deepspeed_engine import DeepSpeedEngine, deepspeed_config
    from unimat_dist.training.config import TrainConfig
    from unimat_dist.training.setup import prepare_run

    c = from_dict(TrainConfig, cfg)
    torch.set_num_threads(1)
    world = ray.train.get_context().get_world_size()
    setup = prepare_run(c, device="cpu", rank=ray.train.get_context().get_world_rank())
    engine = DeepSpeedEngine.create(setup.diffusion, deepspeed_config(c, world_size=world, device_type="cpu"),
                                    weight_decay=0.0)
    micro, _ = c.train.grad_accum_steps(world)
    batch = setup.batcher(setup.train_data.batch(list(range(micro))))
    loss, _ = engine.loss(batch)
    engine.backward(loss)
    engine.step()
    return _held_bytes(engine.module, engine.ds.optimizer) | {"rss": psutil.Process().memory_info().rss}


def _held_bytes(module, optimizer) -> dict:
    import torch

    params = sum((p.ds_tensor if hasattr(p, "ds_tensor") else p).numel() * 4 for p in module.parameters())
    base = getattr(optimizer, "optimizer", optimizer)
    states = sum(t.numel() * t.element_size() for st in base.state.values() for t in st.values() if torch.is_tensor(t))
    masters = sum(p.numel() * p.element_size() for g in base.param_groups for p in g["params"])
    # Without ZeRO (and at stage 0) the optimizer steps the model's own parameters: no separate master copy.
    own = {id(p) for p in module.parameters()}
    if all(id(p) in own for g in base.param_groups for p in g["params"]):
        masters = 0
    return {"params": params, "optimizer_states": states, "optimizer_masters": masters}


def memory(preset: str) -> dict:
    import psutil
    import torch
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from unimat_dist.config import to_dict
    from unimat_dist.training import load_train_config
    from unimat_dist.training.setup import prepare_run

    cfg = load_train_config(CONFIG, [f"model.preset={preset}", "train.global_batch_size=4", "data.limit_train=8",
                                     "data.limit_val=4", "distributed.metrics_port=null"])
    # Baseline: one rank, plain torch AdamW, no ZeRO.
    setup = prepare_run(cfg)
    opt = torch.optim.AdamW(setup.diffusion.parameters(), lr=1e-4)
    b = setup.batcher(setup.train_data.batch([0, 1]))
    loss, _ = setup.diffusion(b.x0, b.y0, b.mask, b.cond)
    loss.backward()
    opt.step()
    single = _held_bytes(setup.diffusion, opt) | {"rss": psutil.Process().memory_info().rss}
    out = {"preset": preset, "parameters": sum(p.numel() for p in setup.diffusion.parameters()), "single_rank": single}
    with tempfile.TemporaryDirectory() as tmp:
        for stage in (1, 2, 3):
            c = load_train_config(CONFIG, [f"model.preset={preset}", "train.global_batch_size=4", "data.limit_train=8",
                                           "data.limit_val=4", f"distributed.zero_stage={stage}",
                                           "distributed.metrics_port=null"])
            res = TorchTrainer(
                _memory_worker, train_loop_config=to_dict(c),
                scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}),
                torch_config=TorchConfig(backend="gloo"),
                run_config=RunConfig(name=f"mem_stage{stage}_{int(time.time())}", storage_path=tmp),
            ).fit()
            out[f"zero{stage}_rank0"] = res.return_value
    base_total = single["params"] + single["optimizer_states"] + single["optimizer_masters"]
    for stage in (1, 2, 3):
        r = out[f"zero{stage}_rank0"]
        total = r["params"] + r["optimizer_states"] + r["optimizer_masters"]
        out[f"zero{stage}_ratio_params_plus_optimizer"] = round(total / base_total, 3)
        out[f"zero{stage}_ratio_optimizer_states"] = round(r["optimizer_states"] / single["optimizer_states"], 3)
        out[f"zero{stage}_ratio_params"] = round(r["params"] / single["params"], 3)
    return out


def gpu(presets: list[str], steps: int, batch_per_gpu: int) -> list[dict]:
    """Ray Train + DeepSpeed on every local GPU, bf16, ZeRO-2 and ZeRO-3: samples/s and MFU."""
    import importlib.util

    import torch

    from unimat_dist.model import build_unet
    from unimat_dist.launch import run_training
    from unimat_dist.training import load_train_config
    from unimat_dist.training.setup import resolve_spec

    spec_ = importlib.util.spec_from_file_location("bench_model", ROOT / "bench" / "bench_model.py")
    bench_model = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(bench_model)
    n = torch.cuda.device_count()
    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in bench_model.PEAK_BF16.items() if k in name), None)
    rows = []
    for preset in presets:
        for stage in (2, 3):
            with tempfile.TemporaryDirectory() as tmp:
                cfg = load_train_config(CONFIG, [
                    f"model.preset={preset}", f"train.steps={steps}", f"train.global_batch_size={batch_per_gpu * n}",
                    f"train.micro_batch_size={batch_per_gpu}", "train.log_every=5", "train.val_every=0",
                    f"train.ckpt_every={steps}", "train.device=auto", "data.dataset=mp_20", "data.limit_train=4096",
                    "data.limit_val=64", "train.val_batches=1", f"distributed.num_workers={n}", "distributed.use_gpu=true",
                    "distributed.cpus_per_worker=1", f"distributed.zero_stage={stage}", "distributed.precision=bf16",
                    "distributed.metrics_port=null", f"out_dir={tmp}/run",
                ])
                run_training(cfg)
                rate = steady_rate(Path(tmp) / "run", 10)
            net = build_unet(cfg.model.unet(), resolve_spec(cfg.data), 0)
            tflops = 3 * net.flops_per_sample() * rate / 1e12
            rows.append({"preset": preset, "zero_stage": stage, "gpus": n, "card": name, "samples_per_s": round(rate, 1),
                         "achieved_tflops": round(tflops, 1), "mfu": round(tflops / (peak * n), 3) if peak else None})
            print(rows[-1])
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--memory-preset", default="small")
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--gpu", action="store_true", help="also the GPU runs (base, large; ZeRO-2/3; bf16)")
    ap.add_argument("--gpu-presets", nargs="+", default=["base", "large"])
    ap.add_argument("--gpu-batch", type=int, default=32, help="micro-batch per GPU")
    args = ap.parse_args()
    import ray

    from unimat_dist.ray_local import init_ray

    init_ray("local", num_cpus=os.cpu_count() if args.gpu else 2, log_to_driver=False)
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]}}
    if args.gpu:
        result["gpu"] = gpu(args.gpu_presets, args.steps, args.gpu_batch)
    if not args.skip_overhead:
        result["overhead"] = overhead(args.preset, args.steps, args.batch)
        print(json.dumps(result["overhead"], indent=1))
    if not args.skip_memory:
        result["memory"] = memory(args.memory_preset)
        print(json.dumps(result["memory"], indent=1))
    ray.shutdown()
    path = ROOT / "bench" / "results" / ("distributed_gpu.json" if args.gpu else "distributed_cpu.json")
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
