"""Responsiveness of small requests while a maximal legal request runs (issue 16), on 127.0.0.1.

    python bench/bench_fairness.py                           # ~6 min on 2 CPU cores
    python bench/bench_fairness.py --seconds 10 --skip-serve # the engine A/B only
    python bench/bench_fairness.py --serve-baseline 312684a^ --big-steps 100 --skip-engine   # served, before/after
    python -m bench fairness --out bench/results/fairness_cpu.json

The small request is what an interactive client sends: 1 crystal, exact composition, DDIM-20. The large one
is the largest request the service accepts: ``--big-samples`` (64, the service's ``max_samples_per_request``)
crystals with DDPM at the most steps the service allows (its advertised ``max_steps`` and compute budget
``max_sample_steps``, confirmed by asking). One closed-loop client sends small requests back to back for
``--seconds``, first alone ("alone"), then while a second client keeps one large request running at all
times ("with big"); the figure of merit is p99(with big) / p99(alone), both measured in this process.

1. **Engine A/B** (the running loop without HTTP: a real ``ProcessSampler`` child loading the checkpoint):
   ``share_rows=None`` (every job advances all its rows at every evaluation: the loop before issue 16)
   against ``share_rows=--share-rows`` (default: the engine's default on a CPU, 8). Also reported: how long the large
   requests took, i.e. what the fairness costs the large request.
   Before both: the cost of one evaluation by rows (the bare sampler, same model and thread), and what it
   predicts for each floor: a 1-row job next to the large one runs at t(1 + share) / t(1) of its speed
   alone, the large one at (rows / share) t(1 + share) / t(rows + 1) -- the basis of the default.
2. **Served** (real Ray Serve, ``deploy.app.application`` with the service's defaults, one replica, one CPU,
   1 torch thread): the same two windows over HTTP, so request parsing, decoding and the proxy are in.
   ``--serve-baseline REV`` measures the service code of git revision REV (a ``git archive`` of it) against
   this tree's, alternating over ``--rounds``, each run in its own process and Ray (PYTHONPATH points Ray's
   workers at that tree); with ``--big-steps`` both get the same large request whatever their limits.

Clients and server share the machine's cores, and the machine may be shared with other jobs: the load
average is recorded with every window.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on 127.0.0.1 (NOTES-stack)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from bench_serve import free_port, percentile  # noqa: E402

SMALL = {"num_samples": 1, "composition": "SrTiO3", "sampler": "ddim", "steps": 20}


def summary(lat: list[float]) -> dict:
    return {"requests": len(lat), "p50_s": percentile(lat, 50), "p99_s": percentile(lat, 99),
            "max_s": max(lat) if lat else float("nan"), "mean_s": statistics.fmean(lat) if lat else float("nan"),
            "load_average": os.getloadavg()[0]}


def windows(small_once, big_once, seconds: float, warmup: float) -> dict:
    """Small requests back to back for ``seconds`` alone, then for ``seconds`` with ``big_once`` looping on
    another thread (``warmup`` seconds after it starts, so the first large request is already in the loop).
    ``small_once()`` / ``big_once(deadline)`` return a latency in seconds (None: failed/abandoned)."""
    out = {}
    for name in ("alone", "with_big"):
        stop, big_lat, big_failed = threading.Event(), [], [0]
        window_end = [float("inf")]
        thread = None
        if name == "with_big":
            def big_loop() -> None:
                while not stop.is_set() and time.perf_counter() < window_end[0]:
                    s = big_once(window_end[0])
                    if s is None:
                        big_failed[0] += 1
                    else:
                        big_lat.append(s)
            thread = threading.Thread(target=big_loop, daemon=True)
            thread.start()
            time.sleep(warmup)
        lat, failed = [], 0
        window_end[0] = time.perf_counter() + seconds
        while time.perf_counter() < window_end[0]:
            s = small_once()
            if s is None:
                failed += 1
            else:
                lat.append(s)
        stop.set()
        if thread is not None:
            thread.join(600)
        out[name] = {**summary(lat), "failed": failed, "latencies": lat}
        if name == "with_big":
            out[name]["big"] = {"completed": len(big_lat), "abandoned_or_failed": big_failed[0],
                                "mean_s": statistics.fmean(big_lat) if big_lat else None, "latencies": big_lat}
    out["p99_ratio"] = out["with_big"]["p99_s"] / out["alone"]["p99_s"]
    out["p50_ratio"] = out["with_big"]["p50_s"] / out["alone"]["p50_s"]
    return out


# ------------------------------------------------------------------ the engine, without HTTP
def evaluation_cost(checkpoint: str, big_rows: int) -> dict:
    """Milliseconds per evaluation by rows (bare sampler, DDIM-10, best of 5) and the slowdowns each floor
    predicts for a 1-row job next to a ``big_rows`` one (and for that one)."""
    from unimat_dist.generation import GenerationJob, open_generator, prepare_job, run_jobs
    from unimat_dist.inference import SampleRequest

    g = open_generator(checkpoint, device="cpu")
    rows = sorted({1, 2, 3, 5, 9, 17, 33, big_rows, big_rows + 1})
    ms = {}
    for n in rows:
        job = prepare_job(g, GenerationJob(n, SampleRequest(SMALL["composition"]), "ddim", 10, 0.0, 0))
        run_jobs(g, [job], max_rows=n)
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            run_jobs(g, [job], max_rows=n)
            best = min(best, time.perf_counter() - t0)
        ms[n] = 1e3 * best / 10
    predicted = {}
    for share in (1, 2, 4, 8, 16, 32, big_rows):
        predicted[share] = {"small_slowdown": ms[1 + share] / ms[1],
                            "big_slowdown": (big_rows / share) * ms[1 + share] / ms[big_rows + 1]}
    return {"ms_per_evaluation": ms, "predicted_by_share": predicted}


def engine_run(checkpoint: str, share_rows: int | None, big: dict, seconds: float, warmup: float) -> dict:
    from unimat_dist.generation import GenerationJob, open_generator, prepare_job
    from unimat_dist.generation.engine_process import ProcessSampler
    from unimat_dist.inference import SampleRequest

    g = open_generator(checkpoint, device="cpu")  # for prepare_job (conditions) only
    engine = ProcessSampler({"checkpoint": checkpoint, "device": "cpu"}, max_requests=32, max_rows=512,
                            share_rows=share_rows, torch_threads=1)
    seeds = iter(range(10**9))

    def job(spec: dict) -> GenerationJob:
        return prepare_job(g, GenerationJob(spec["num_samples"], SampleRequest(spec["composition"]), spec["sampler"],
                                            spec["steps"], 0.0, next(seeds)))

    def once(spec: dict, deadline: float = float("inf")) -> float | None:
        done, err = threading.Event(), []
        t0 = time.perf_counter()
        ticket = engine.submit(job(spec), lambda b, s, e: (err.append(e), done.set()))
        while not done.wait(0.05):
            if time.perf_counter() > deadline + 1.0:  # the window is over: withdraw it (as a gone client would)
                engine.cancel(ticket)
                done.wait(600)
                return None
        return None if err[0] is not None else time.perf_counter() - t0

    try:
        for _ in range(3):
            once(SMALL)  # warm-up
        return windows(lambda: once(SMALL), lambda deadline: once(big, deadline), seconds, warmup)
    finally:
        engine.close(timeout=30)


# ------------------------------------------------------------------ the service, over HTTP
def largest_legal(url: str, big_samples: int, max_steps: int = 1000) -> tuple[dict, list]:
    """The largest DDPM request of ``big_samples`` crystals the service accepts: the steps its ``GET /v1/model``
    limits allow (``max_steps``, and ``max_sample_steps`` // crystals where the service has a compute budget),
    confirmed by asking; halved while the answer is still a 422 (nothing is generated for a refused request).
    ``max_steps`` caps the steps (to compare services with different limits on the same request)."""
    import requests

    limits = requests.get(url.rsplit("/v1/", 1)[0] + "/v1/model", timeout=30).json().get("limits", {})
    steps = min(max_steps, int(limits.get("max_steps", 1000)))
    if limits.get("max_sample_steps"):
        steps = min(steps, int(limits["max_sample_steps"]) // big_samples)
    tried = []
    while steps >= 1:
        body = {"num_samples": big_samples, "composition": "SrTiO3", "sampler": "ddpm", "steps": steps, "seed": 0,
                "format": "json"}
        # a short client timeout: an accepted request is abandoned at once (the service cancels its job)
        try:
            r = requests.post(url, json=body, timeout=2)
            tried.append((steps, r.status_code))
            if r.status_code == 422:
                steps //= 2
                continue
        except requests.exceptions.Timeout:
            tried.append((steps, "accepted"))
        return body, tried
    raise RuntimeError(f"the service refuses every DDPM request of {big_samples} crystals: {tried}")


def serve_run(checkpoint: str, big_samples: int, seconds: float, warmup: float, big_steps: int | None = None,
              keep_latencies: bool = False) -> dict:
    import ray
    import requests
    from ray import serve

    from deploy.app import application

    port = free_port()
    from unimat_dist.ray_local import init_ray

    init_ray("local", num_cpus=2, num_gpus=0, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(application({"checkpoint": checkpoint, "torch_threads": 1, "device": "cpu"},
                              ray_actor_options={"num_cpus": 1}), name="fairness", route_prefix="/")
        url = f"http://127.0.0.1:{port}/v1/generate"
        big, tried = largest_legal(url, big_samples, big_steps or 1000)
        time.sleep(2.0)  # the abandoned probe leaves the loop
        print(f"[serve] largest legal request: {big['num_samples']} x DDPM-{big['steps']} (tried {tried})", flush=True)
        small_session, big_session = requests.Session(), requests.Session()
        seeds = iter(range(1, 10**9))

        def small_once() -> float | None:
            t0 = time.perf_counter()
            try:
                r = small_session.post(url, json={**SMALL, "seed": next(seeds), "format": "json"}, timeout=120)
                return time.perf_counter() - t0 if r.status_code == 200 else None
            except requests.RequestException:
                return None

        def big_once(deadline: float) -> float | None:
            t0 = time.perf_counter()
            try:  # abandoned when the window ends: the client's disconnect withdraws the job
                r = big_session.post(url, json={**big, "seed": next(seeds)},
                                     timeout=max(1.0, min(600.0, deadline + 1.0 - t0)))
                return time.perf_counter() - t0 if r.status_code == 200 else None
            except requests.RequestException:
                big_session.close()
                return None

        for _ in range(3):
            small_once()
        out = windows(small_once, big_once, seconds, warmup)
        out["big_request"] = {k: big[k] for k in ("num_samples", "sampler", "steps")}
        if not keep_latencies:
            for name in ("alone", "with_big"):
                out[name].pop("latencies")
            out["with_big"]["big"].pop("latencies")
        out["probe"] = tried
        out["service_limits"] = requests.get(url.replace("/v1/generate", "/v1/model"), timeout=30).json()["limits"]
        return out
    finally:
        serve.shutdown()
        ray.shutdown()


def serve_once(root: str, out: str, args) -> int:
    """One served measurement with the service code of the tree ``root`` (its ``deploy`` and ``unimat_dist``
    first on the path, here and, through PYTHONPATH set by the caller, in Ray's workers)."""
    assert "deploy" not in sys.modules and "unimat_dist" not in sys.modules, "imported from the wrong tree"
    sys.path.insert(0, root)
    import deploy.app
    import unimat_dist.generation.continuous as continuous

    r = serve_run(str(Path(root) / "checkpoints" / Path(args.checkpoint).name), args.big_samples, args.seconds,
                  args.warmup, args.big_steps, keep_latencies=True)
    r["code"] = {"root": root, "deploy_app": deploy.app.__file__, "continuous": continuous.__file__,
                 "share_rows": getattr(continuous, "SHARE_ROWS_AUTO", None)}
    Path(out).write_text(json.dumps(r))
    return 0


def serve_ab(args, baseline_rev: str) -> dict:
    """Served windows of ``baseline_rev``'s service code against this tree's, alternating over ``--rounds``,
    each in a fresh process (and Ray); latencies pooled per side. The checkpoint is each tree's own copy."""
    import subprocess
    import tempfile

    tmp = tempfile.TemporaryDirectory()
    base_root = Path(tmp.name) / "baseline"
    base_root.mkdir()
    archive = subprocess.run(["git", "archive", baseline_rev], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(base_root)], input=archive, check=True)
    sides = {f"baseline {baseline_rev}": str(base_root), "this tree": str(ROOT)}
    pooled = {side: {"alone": [], "with_big": [], "runs": []} for side in sides}
    try:
        for k in range(args.rounds):
            for side, root in sides.items():
                out = Path(tmp.name) / f"serve-{k}-{len(pooled[side]['runs'])}-{root == str(ROOT)}.json"
                env = {**os.environ, "PYTHONPATH": root}
                cmd = [sys.executable, __file__, "--serve-once", root, str(out), "--seconds", str(args.seconds),
                       "--warmup", str(args.warmup), "--big-samples", str(args.big_samples), "--checkpoint",
                       args.checkpoint] + (["--big-steps", str(args.big_steps)] if args.big_steps else [])
                subprocess.run(cmd, env=env, cwd=root, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=900)
                r = json.loads(out.read_text())
                pooled[side]["alone"] += r["alone"].pop("latencies")
                pooled[side]["with_big"] += r["with_big"].pop("latencies")
                r["with_big"]["big"].pop("latencies")
                pooled[side]["runs"].append(r)
                print(f"[serve {side}, round {k}] small p50/p99 alone {r['alone']['p50_s']:.3f}/"
                      f"{r['alone']['p99_s']:.3f} s, with {r['big_request']} running {r['with_big']['p50_s']:.3f}/"
                      f"{r['with_big']['p99_s']:.3f} s"
                      f" ({r['code']['continuous']})", flush=True)
    finally:
        tmp.cleanup()
    result = {}
    for side, lat in pooled.items():
        alone, with_big = summary(lat["alone"]), summary(lat["with_big"])
        result[side] = {"alone": alone, "with_big": with_big, "p99_ratio": with_big["p99_s"] / alone["p99_s"],
                        "p50_ratio": with_big["p50_s"] / alone["p50_s"], "runs": lat["runs"]}
        print(f"[serve {side}, {args.rounds} rounds pooled] small p50/p99 alone {alone['p50_s']:.3f}/"
              f"{alone['p99_s']:.3f} s, with the large request {with_big['p50_s']:.3f}/{with_big['p99_s']:.3f} s -> "
              f"p99 {result[side]['p99_ratio']:.2f}x, p50 {result[side]['p50_ratio']:.2f}x", flush=True)
    return result


def engine_ab(args, big_steps: int | None) -> dict:
    """The engine A/B: ``share_rows=None`` against ``args.share_rows``, alternating over ``args.rounds``."""
    engine: dict = {}
    big = {"num_samples": args.big_samples, "composition": "SrTiO3", "sampler": "ddpm", "steps": big_steps or 1000}
    engine["evaluation_cost"] = cost = evaluation_cost(args.checkpoint, args.big_samples)
    per_rows = ", ".join(f"{n}: {v:.1f}" for n, v in cost["ms_per_evaluation"].items())
    by_share = ", ".join(f"{k}: {v['small_slowdown']:.1f}x/{v['big_slowdown']:.1f}x"
                         for k, v in cost["predicted_by_share"].items())
    print(f"[cost] ms per evaluation by rows: {per_rows}\n[cost] predicted slowdown (1-row job / large job) by "
          f"share_rows: {by_share}", flush=True)
    engine.update({"big_request": {k: big[k] for k in ("num_samples", "sampler", "steps")}, "rounds": []})
    policies = {"unlimited": None, f"share_rows={args.share_rows}": args.share_rows}
    pooled = {label: {"alone": [], "with_big": [], "big": []} for label in policies}
    for k in range(args.rounds):
        for label, share in policies.items():  # alternating, so drifting background load hits both policies
            r = engine_run(args.checkpoint, share, big, args.seconds, args.warmup)
            pooled[label]["alone"] += r["alone"].pop("latencies")
            pooled[label]["with_big"] += r["with_big"].pop("latencies")
            pooled[label]["big"] += r["with_big"]["big"].pop("latencies")
            engine["rounds"].append({"round": k, "policy": label, **r})
            print(f"[engine {label}, round {k}] small p99 alone {r['alone']['p99_s']:.3f} s, with {big['num_samples']}"
                  f" x DDPM-{big['steps']} running {r['with_big']['p99_s']:.3f} s -> {r['p99_ratio']:.2f}x "
                  f"(p50 {r['p50_ratio']:.2f}x); large requests {r['with_big']['big']}; load {os.getloadavg()[0]:.1f}",
                  flush=True)
    for label, lat in pooled.items():  # all rounds together: more requests behind each p99
        alone, with_big = summary(lat["alone"]), summary(lat["with_big"])
        engine[label] = {
            "alone": alone, "with_big": with_big, "p99_ratio": with_big["p99_s"] / alone["p99_s"],
            "p50_ratio": with_big["p50_s"] / alone["p50_s"],
            "big_completed": len(lat["big"]), "big_mean_s": statistics.fmean(lat["big"]) if lat["big"] else None}
    before, after = engine["unlimited"], engine[f"share_rows={args.share_rows}"]
    engine["p99_with_big_before_over_after"] = before["with_big"]["p99_s"] / after["with_big"]["p99_s"]
    for label in policies:
        r = engine[label]
        print(f"[engine {label}, {args.rounds} rounds pooled] small p50/p99 alone {r['alone']['p50_s']:.3f}/"
              f"{r['alone']['p99_s']:.3f} s, with the large request running {r['with_big']['p50_s']:.3f}/"
              f"{r['with_big']['p99_s']:.3f} s -> p99 {r['p99_ratio']:.2f}x, p50 {r['p50_ratio']:.2f}x; large requests "
              f"completed {r['big_completed']}, mean {r['big_mean_s'] or float('nan'):.1f} s", flush=True)
    print(f"[engine] small-request p99 with a maximal request running / alone: before {before['p99_ratio']:.2f}x, "
          f"after {after['p99_ratio']:.2f}x; p50: {before['p50_ratio']:.2f}x -> {after['p50_ratio']:.2f}x; machine: "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()}", flush=True)
    return engine


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "perov5_transformer_cpu.pt"))
    ap.add_argument("--seconds", type=float, default=20.0, help="timed window of each condition")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds between starting the large request and timing")
    ap.add_argument("--big-samples", type=int, default=64, help="crystals of the large request")
    ap.add_argument("--big-steps", type=int, default=None,
                    help="DDPM steps of the large request, at most (default: what the service accepts, or 1000 "
                         "with --skip-serve)")
    ap.add_argument("--share-rows", type=int, default=None,
                    help="the policy under test (default: the engine's CPU default)")
    ap.add_argument("--rounds", type=int, default=2, help="engine A/B rounds (policies alternate; pooled)")
    ap.add_argument("--skip-serve", action="store_true", help="the engine A/B only")
    ap.add_argument("--serve-baseline", metavar="REV", default=None,
                    help="also the served windows of git revision REV's service code (e.g. the commit before a "
                         "scheduling change) against this tree's, alternating over --rounds")
    ap.add_argument("--skip-engine", action="store_true", help="no engine A/B")
    ap.add_argument("--serve-once", nargs=2, metavar=("ROOT", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "fairness_cpu.json"))
    args = ap.parse_args()
    if args.serve_once:  # the child of --serve-baseline (before anything imports the service code)
        return serve_once(*args.serve_once, args)

    import torch

    from unimat_dist.generation.continuous import SHARE_ROWS_AUTO

    args.share_rows = args.share_rows or SHARE_ROWS_AUTO["cpu"]

    torch.set_num_threads(1)
    results: dict = {"checkpoint": args.checkpoint, "small_request": SMALL, "seconds": args.seconds,
                     "share_rows": args.share_rows, "cpu_count": os.cpu_count(), "load_average_start": os.getloadavg()}
    big_steps = args.big_steps
    if args.serve_baseline:  # this tree's service too, each side in its own process
        results["serve_ab"] = ab = serve_ab(args, args.serve_baseline)
        big_steps = big_steps or ab["this tree"]["runs"][0]["big_request"]["steps"]
    elif not args.skip_serve:
        results["serve"] = serve_run(args.checkpoint, args.big_samples, args.seconds, args.warmup, args.big_steps)
        big_steps = big_steps or results["serve"]["big_request"]["steps"]
        s = results["serve"]
        print(f"[serve] small p99 alone {s['alone']['p99_s']:.3f} s, with big {s['with_big']['p99_s']:.3f} s -> "
              f"{s['p99_ratio']:.2f}x (p50 {s['p50_ratio']:.2f}x); load {os.getloadavg()[0]:.1f}", flush=True)
    if not args.skip_engine:
        results["engine"] = engine_ab(args, big_steps)
    results["load_average_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
