"""Model benchmark (issue 5): training throughput, memory and FLOP utilisation per preset; sampling speed.

    python bench/bench_model.py                               # CPU: tiny/small/base, ~5 min on 2 cores
    python bench/bench_model.py --presets tiny small large --dataset mp_20 --batch 8
    python bench/bench_model.py --out bench/results/model.json

What it measures, on the device it finds (GPU numbers only where CUDA is available):

1. training step (forward + backward + AdamW) samples/s and peak memory per preset, at the UniMat size
   of ``--dataset`` (default perov_5 on CPU: L=3 x 9 x 18; mp_20 on GPU: L=20 x 9 x 18). CPU peak
   memory is the process's resident-set peak above its level before the preset was built (sampled
   every 5 ms), plus the bytes autograd saved for backward; GPU peak memory is
   ``torch.cuda.max_memory_allocated``.
2. baselines in the same process: the factorised (1,3,3)+(3,1,1) convolutions against full 3x3x3
   convolutions (the design choice documented in unimat_dist/model/blocks.py), and on GPU bf16
   autocast against fp32.
3. achieved TFLOP/s = forward FLOPs per sample (torch FlopCounterMode) x 3 (forward + backward) x
   samples/s, and the model FLOPs utilisation against the GPU's dense bf16 peak when it is known.
4. sampling: structures/s for DDIM-100 and DDPM-1000 at batch 256 (``--sample-batch``). On CPU the
   DDPM-1000 run is timed over ``--cpu-ddpm-steps`` steps and extrapolated (printed as such): every
   step costs the same one batched forward, so the extrapolation is linear.
The machine may be shared: the load average is printed with the results.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unimat_dist.diffusion import GaussianDiffusion, sample  # noqa: E402
from unimat_dist.model import Condition, build_unet, get_preset  # noqa: E402
from unimat_dist.training.config import DataConfig  # noqa: E402
from unimat_dist.training.setup import resolve_spec  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s) for MFU; matched on the device name.
PEAK_BF16 = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0, "V100": 125.0}


class RSSPeak:
    """Peak resident set size of this process while active (psutil, polled every 5 ms)."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def saved_activation_bytes(step_fn) -> int:
    """Bytes autograd keeps for backward during one forward (the activation memory)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step_fn()
    return total


def make_batch(spec, b, p, device):
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((b, *spec.shape), -1.0)
    mask = torch.rand((b, *spec.shape[:3]), generator=g) < 0.01
    x0[mask] = torch.rand((int(mask.sum()), 3), generator=g)
    y0 = torch.randn((b, spec.lattice_dim), generator=g)
    cond = Condition(mask.float(), torch.ones(b, dtype=torch.bool), torch.randn(b, p), torch.ones(b, p, dtype=torch.bool))
    return x0.to(device), y0.to(device), mask.to(device), cond.to(device)


def bench_train(preset, spec, batch, device, amp, iters, warmup, **overrides) -> dict:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with RSSPeak() as rss:
        torch.manual_seed(0)
        net = build_unet(get_preset(preset, **overrides), spec, 1)
        diffusion = GaussianDiffusion(net, spec.allowed_cells).to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4, **({"fused": True} if device.type == "cuda" else {}))
        x0, y0, mask, cond = make_batch(spec, batch, 1, device)

        def fwd():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                return diffusion(x0, y0, mask, cond)[0]

        def step():
            fwd().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        for _ in range(warmup):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / iters
        act = saved_activation_bytes(fwd)
    flops = net.flops_per_sample()
    out = {
        "preset": preset,
        "overrides": overrides,
        "params": net.num_params(),
        "batch": batch,
        "precision": "bf16" if amp else "fp32",
        "step_s": dt,
        "samples_per_s": batch / dt,
        "gflop_fwd_per_sample": flops / 1e9,
        "achieved_tflops": 3 * flops * batch / dt / 1e12,
        "activation_gib": act / 2**30,
    }
    if device.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        if peak and amp:
            out["mfu"] = out["achieved_tflops"] / peak
    else:
        out["peak_rss_gib"] = (rss.peak - rss.base) / 2**30
    del net, diffusion, opt
    return out


def bench_sampling(preset, spec, batch, device, amp, cpu_ddpm_steps) -> list[dict]:
    torch.manual_seed(0)
    net = build_unet(get_preset(preset), spec, 1)
    d = GaussianDiffusion(net, spec.allowed_cells).to(device).eval()
    cond = Condition.unconditional(batch, spec.shape[:3], 1, device)
    dtype = torch.bfloat16 if amp else None
    sample(d, cond[:2], sampler="ddim", steps=2, autocast_dtype=dtype)  # warm-up
    rows = []
    for sampler, steps in (("ddim", 100), ("ddpm", 1000)):
        run_steps = steps if device.type == "cuda" or sampler == "ddim" else min(cpu_ddpm_steps, steps)
        g = torch.Generator(device=device).manual_seed(0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        if run_steps == steps:
            sample(d, cond, sampler=sampler, steps=steps, generator=g, autocast_dtype=dtype)
        else:  # the first run_steps steps of the 1000-step chain, then scale
            sample(d, cond, sampler="ddpm", steps=run_steps, generator=g, autocast_dtype=dtype)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) * steps / run_steps
        rows.append({
            "preset": preset, "sampler": f"{sampler.upper()}-{steps}", "batch": batch,
            "structures_per_s": batch / dt, "seconds": dt,
            "measured_steps": run_steps, "extrapolated": run_steps != steps,
        })
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=None, help="default: tiny small base (+ large on GPU)")
    ap.add_argument("--dataset", default=None, help="UniMat size; default perov_5 on CPU, mp_20 on GPU")
    ap.add_argument("--batch", type=int, default=None, help="training batch (default 8 on CPU, 64 on GPU)")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (oneDNN picks kernels on the first calls)")
    ap.add_argument("--sample-preset", default=None, help="preset for the sampling benchmark (default tiny on CPU, small on GPU)")
    ap.add_argument("--sample-batch", type=int, default=256)
    ap.add_argument("--cpu-ddpm-steps", type=int, default=20, help="DDPM steps actually run on CPU (then extrapolated)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="JSON file for the results")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dataset = args.dataset or ("mp_20" if cuda else "perov_5")
    spec = resolve_spec(DataConfig(dataset=dataset))
    presets = args.presets or (["tiny", "small", "base", "large"] if cuda else ["tiny", "small", "base"])
    batch = args.batch or (64 if cuda else 8)
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'} ({torch.get_num_threads()} threads); "
          f"{spec.describe()} ({dataset}); load average {os.getloadavg()}", flush=True)

    results: dict = {"device": torch.cuda.get_device_name() if cuda else "cpu", "spec": spec.to_dict(), "train": [],
                     "baselines": [], "sampling": []}
    print(f"\n{'preset':<7}{'params':>12}{'prec':>6}{'batch':>6}{'samples/s':>11}{'GFLOP/smp':>11}"
          f"{'TFLOP/s':>9}{'MFU':>7}{'peak GiB':>10}{'act GiB':>9}")
    for preset in presets:
        r = bench_train(preset, spec, batch, device, cuda, args.iters, args.warmup)
        results["train"].append(r)
        peak = r.get("peak_mem_gib", r.get("peak_rss_gib", float("nan")))
        mfu = f"{r['mfu']:.1%}" if "mfu" in r else "-"
        print(f"{preset:<7}{r['params']:>12,}{r['precision']:>6}{batch:>6}{r['samples_per_s']:>11.2f}"
              f"{r['gflop_fwd_per_sample']:>11.2f}{r['achieved_tflops']:>9.3f}{mfu:>7}{peak:>10.2f}{r['activation_gib']:>9.3f}",
              flush=True)

    print("\nbaselines (same process, same batch):")
    for preset in [p for p in presets if p in ("tiny", "small")]:
        fact = next(r for r in results["train"] if r["preset"] == preset)
        full = bench_train(preset, spec, batch, device, cuda, args.iters, args.warmup, conv="full")
        ratio = fact["samples_per_s"] / full["samples_per_s"]
        results["baselines"].append({"preset": preset, "what": "factorized vs full 3x3x3 conv", "speedup": ratio,
                                     "params_full": full["params"], "params_factorized": fact["params"]})
        print(f"  {preset}: factorized conv {fact['samples_per_s']:.2f} vs full 3x3x3 {full['samples_per_s']:.2f} samples/s "
              f"-> x{ratio:.2f}; params {fact['params']:,} vs {full['params']:,}", flush=True)
        if cuda:
            fp32 = bench_train(preset, spec, batch, device, False, args.iters, args.warmup)
            ratio = fact["samples_per_s"] / fp32["samples_per_s"]
            results["baselines"].append({"preset": preset, "what": "bf16 autocast vs fp32", "speedup": ratio})
            print(f"  {preset}: bf16 {fact['samples_per_s']:.2f} vs fp32 {fp32['samples_per_s']:.2f} samples/s -> x{ratio:.2f}")

    sp = args.sample_preset or ("small" if cuda else "tiny")
    print(f"\nsampling ({sp}, batch {args.sample_batch}, unconditional):")
    for r in bench_sampling(sp, spec, args.sample_batch, device, cuda, args.cpu_ddpm_steps):
        results["sampling"].append(r)
        note = f" (extrapolated from {r['measured_steps']} steps)" if r["extrapolated"] else ""
        print(f"  {r['sampler']:<10} {r['structures_per_s']:8.2f} structures/s  ({r['seconds']:.1f} s per batch){note}",
              flush=True)
    results["load_average"] = os.getloadavg()
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
        print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
