"""Sampling throughput of `unimat sample` with the default thread policy vs explicit thread counts.

    python -m bench threads [--num 16] [--steps 50] [--repeats 3] [--competitors N]

Runs the real entry point (``unimat sample`` from checkpoints/perov5_transformer_cpu.pt, extxyz only, no
gallery) in a fresh process per run, with a clean environment (no OMP_NUM_THREADS / UNIMAT_THREADS), and
reads the sampling throughput the command itself measured (summary.json ``structures_per_second``).
Settings: the default (unimat_dist.cpu_threads' policy) and ``--threads N`` for N = 1, 2, 4, ... up to
the CPUs (``--threads <all CPUs>`` is what torch's own default did before the policy). Conditions:
"idle" (nothing started by the bench; the load of the machine is recorded, as it may be shared) and
"competing" (the bench starts N CPU-bound busy loops first, default half the usable CPUs, at least 1).
Runs are interleaved round-robin over the settings so drifting load hits every setting alike; each
setting's throughput is the median of its repeats. Pass: default >= 0.9 x the best explicit setting in
both conditions. Results: bench/results/threads.json.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unimat_dist import cpu_threads  # noqa: E402

CHECKPOINT = ROOT / "checkpoints" / "perov5_transformer_cpu.pt"
OUT = ROOT / "bench" / "results" / "threads.json"
CHOSE = re.compile(r"(\d+) thread\(s\) \(usable CPUs (\d+), busy elsewhere ([\d.]+|None)")


def _spin() -> None:  # pragma: no cover - a competitor process
    x = 0
    while True:
        x += 1


def _env() -> dict:
    env = dict(os.environ)
    for var in (*cpu_threads.THREAD_ENV_VARS, cpu_threads.AUTO_MARK, cpu_threads.USER_ENV, cpu_threads.LOAD_ENV):
        env.pop(var, None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_once(threads: int | None, args) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_threads_") as tmp:
        cmd = [sys.executable, "-c", "import sys; from unimat_dist.cli import main; sys.exit(main())",
               "--log-level", "DEBUG", "sample", "--checkpoint", str(CHECKPOINT), "--num", str(args.num),
               "--steps", str(args.steps), "--batch-size", str(args.num), "--device", "cpu", "--format", "extxyz",
               "--no-gallery", "--facts-workers", "1", "--out", str(Path(tmp) / "out")]
        if threads is not None:
            cmd += ["--threads", str(threads)]
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            return {"threads": threads, "timeout": True, "structures_per_second": args.num / args.timeout,
                    "wall_seconds": args.timeout, "load1": load0}
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise RuntimeError(f"unimat sample failed ({p.returncode}):\n{p.stderr[-3000:]}")
        summary = json.loads((Path(tmp) / "out" / "summary.json").read_text())
        m = CHOSE.search(p.stderr)
        return {"threads": threads, "timeout": False, "structures_per_second": summary["structures_per_second"],
                "sample_seconds": round(summary["sample_seconds"], 2), "wall_seconds": round(wall, 2),
                "load1": load0, "policy_threads": int(m.group(1)) if m else None,
                "policy_busy_elsewhere": (None if not m or m.group(3) == "None" else float(m.group(3)))}


def measure(condition: str, settings: list, args) -> dict:
    competitors = []
    if condition == "competing":
        ctx = mp.get_context("spawn")
        competitors = [ctx.Process(target=_spin, daemon=True) for _ in range(args.competitors)]
        for c in competitors:
            c.start()
        time.sleep(2.0)
    runs: dict[str, list] = {str(s): [] for s in settings}
    try:
        for rep in range(args.repeats):
            for s in settings:
                r = run_once(s, args)
                runs[str(s)].append(r)
                print(f"  {condition:9s} rep {rep} threads={'default' if s is None else s}: "
                      f"{r['structures_per_second']:.2f} crystals/s (sample {r.get('sample_seconds')} s, "
                      f"policy chose {r.get('policy_threads')}, load1 {r['load1']:.1f})", flush=True)
    finally:
        for c in competitors:
            c.kill()
            c.join()
    med = {k: statistics.median(r["structures_per_second"] for r in v) for k, v in runs.items()}
    explicit = {k: v for k, v in med.items() if k != "None"}
    best_key = max(explicit, key=explicit.get)
    all_cpus = str(max(s for s in settings if s is not None))
    return {
        "condition": condition, "competitors": len(competitors),
        "median_crystals_per_second": {("default" if k == "None" else f"threads={k}"): round(v, 3)
                                       for k, v in med.items()},
        "best_explicit": f"threads={best_key}",
        "default_over_best": round(med["None"] / explicit[best_key], 3),
        "default_over_all_cpu_threads": round(med["None"] / explicit[all_cpus], 3),
        "policy_threads": [r.get("policy_threads") for r in runs["None"]],
        "runs": runs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--competitors", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=300.0, help="per run; a run past it counts as num/timeout")
    ap.add_argument("--conditions", default="idle,competing")
    args = ap.parse_args()
    usable = cpu_threads.usable_cpus()
    args.competitors = args.competitors or max(1, usable // 2)
    counts = sorted({n for n in (1, 2, 4, 8, 16, 32, 64) if n < usable} | {usable})
    settings = [None, *counts]
    print(f"usable CPUs {usable} (os.cpu_count {os.cpu_count()}), load {os.getloadavg()}, "
          f"busy elsewhere now {cpu_threads.busy_elsewhere(usable, 1.0)}", flush=True)
    results = []
    for cond in args.conditions.split(","):
        res = measure(cond, settings, args)
        results.append(res)
        print(f"{cond}: default {res['median_crystals_per_second']['default']:.2f} crystals/s = "
              f"{res['default_over_best']:.2f} x best explicit ({res['best_explicit']}), "
              f"{res['default_over_all_cpu_threads']:.2f} x --threads {usable} (torch's default before)", flush=True)
    out = {
        "bench": "threads", "checkpoint": str(CHECKPOINT.relative_to(ROOT)), "num": args.num, "steps": args.steps,
        "repeats": args.repeats, "usable_cpus": usable, "cpu_count": os.cpu_count(),
        "loadavg_at_end": os.getloadavg(),
        "note": "machine shared with other jobs: see each run's load1; 'idle' = nothing started by the bench",
        "pass": all(r["default_over_best"] >= 0.9 for r in results), "results": results,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"pass (default within 10 % of the best in every condition): {out['pass']}; wrote {OUT}")


if __name__ == "__main__":
    main()
