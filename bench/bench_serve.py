"""Generation service benchmark (issue 8): structures/s and latency of the Ray Serve app with and without
request batching, at concurrency 1, 8 and 32, plus a bounded mixed load test; all on 127.0.0.1.

    python bench/bench_serve.py                                   # ~9 min on 2 CPU cores (fp32 and bf16)
    python bench/bench_serve.py --precision bf16 --steps 20 --seconds 20
    python bench/bench_serve.py --checkpoint out/train_tiny_cpu --out bench/results/serve_cpu.json

For each ``--precision`` (fp32, then bf16: the network in bf16 weights, the fast path on CPUs with
AMX / AVX512-BF16), one Ray instance serves the same model twice: application ``batched-<precision>``
(``max_batch_size`` 32) and the baseline ``unbatched-<precision>`` (``max_batch_size`` 1: one request in
the running loop at a time), one replica each with one CPU, the same torch threads, the same
``max_ongoing_requests`` (64) and the same settings otherwise (``--engine``: each replica's loop in a
child process, the default, or in the replica's process); both are deleted before the next precision.
For every (application, concurrency) pair, ``concurrency`` closed-loop clients (threads with keep-alive
HTTP sessions) send one-crystal, exact-count DDIM requests back to back for ``--seconds`` after a short
warm-up; structures/s = crystals returned / wall time; p50/p99 = request latency percentiles seen by
the clients; the mean batch is the mean number of requests sharing one network evaluation, from the
service's ``/v1/stats``. The ratio batched/unbatched at concurrency 32 is the figure of merit
(goal: >= 5x). Before the service starts, the bare sampler is timed in-process at batch 1 and batch
``--max-batch-size`` (same model, precision and threads): the ratio of the two is the most batching can
gain on this device (on a CPU it is bounded by how much cheaper per sample a batched convolution is; on a
GPU batch 1 is launch-bound and the ceiling is far higher).

The load test then sends ``--load-requests`` mixed requests (compositions, 1-4 crystals, DDIM/DDPM,
CIF/JSON, a few property-guided) from ``--load-clients`` concurrent clients to the batched app and
counts every non-200 answer or client exception as an error (goal: zero).

The default model is the ``tiny`` preset at the Perov-5 size of ``cluster/jobs/train_tiny_cpu.yaml``
(L=3 x 9 x 18, T=1000, one property) with random weights, written to a temporary checkpoint: the
service's cost does not depend on the weights for exact-count requests (fixed atom counts to decode).
Pass ``--checkpoint`` to use a trained run instead. The machine may be shared: the load average is
printed with the results. Clients and server share the machine's cores.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on 127.0.0.1 (NOTES-stack)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

COMPOSITIONS = ["SrTiO3", "BaTiO3", "CaZrO3", "LaAlO3", "KNbO3", "NaTaO3", "PbTiO3", "BiFeO3"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_checkpoint(path: Path) -> str:
    """An untrained tiny model at the Perov-5 full-table size (what train_tiny_cpu.yaml trains)."""
    import torch

    from unimat_dist.diffusion import GaussianDiffusion
    from unimat_dist.model import PropertyScaler, build_unet, get_preset
    from unimat_dist.representation import Normalizer, UniMatSpec
    from unimat_dist.inference import inference_payload, save_inference_checkpoint

    torch.manual_seed(0)
    spec = UniMatSpec(max_atoms_per_element=3)
    net = build_unet(get_preset("tiny"), spec, num_properties=1)
    d = GaussianDiffusion(net, spec.allowed_cells, timesteps=1000, schedule="linear")
    payload = inference_payload(net, d.config(), spec, Normalizer.default(spec),
                                PropertyScaler(("heat_ref",), (0.5,), (0.5,)), step=0, weights="model")
    save_inference_checkpoint(payload, str(path))
    return str(path)


def offline_bound(checkpoint: str, steps: int, threads: int, batch: int, precision: str = "fp32",
                  device: str = "cpu") -> dict:
    """Structures/s of the bare sampler (no HTTP, no Serve) at batch 1 and ``batch``, same model and
    threads: the ceiling of what request batching can gain on this machine."""
    import torch

    from unimat_dist.generation import GenerationJob, open_generator, prepare_job, run_jobs
    from unimat_dist.inference import SampleRequest

    torch.set_num_threads(threads)
    g = open_generator(checkpoint, device=device, precision=precision)

    def rate(b: int, repeats: int) -> float:
        best = float("inf")
        for r in range(repeats):
            jobs = [prepare_job(g, GenerationJob(1, SampleRequest(COMPOSITIONS[i % len(COMPOSITIONS)]), "ddim", steps,
                                                 0.0, r * 1000 + i)) for i in range(b)]
            t0 = time.perf_counter()
            run_jobs(g, jobs, max_rows=b)
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        return b / best

    rate(batch, 1)  # warm-up
    one, many = rate(1, 5), rate(batch, 2)
    return {"batch_1_structures_per_s": one, f"batch_{batch}_structures_per_s": many, "ratio": many / one}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


def closed_loop(url: str, concurrency: int, seconds: float, warmup: float, body_fn) -> dict:
    """``concurrency`` clients posting back to back for ``warmup + seconds``; throughput and latencies are
    those of the requests that complete inside the timed window (the last ``seconds``)."""
    import requests

    stop_at = time.perf_counter() + warmup + seconds
    window_start = time.perf_counter() + warmup
    lock = threading.Lock()
    lat, crystals, errors = [], [0], [0]

    def client(cid: int) -> None:
        session = requests.Session()
        i = 0
        while time.perf_counter() < stop_at:
            body = body_fn(cid, i)
            i += 1
            t0 = time.perf_counter()
            try:
                r = session.post(url, json=body, timeout=300)
                ok = r.status_code == 200
                n = len(r.json()["structures"]) if ok else 0
            except Exception:  # counted, the bench goes on
                ok, n = False, 0
            t1 = time.perf_counter()
            if window_start <= t1 <= stop_at:  # completions inside the window (unbiased for long latencies)
                with lock:
                    if ok:
                        lat.append(t1 - t0)
                        crystals[0] += n
                    else:
                        errors[0] += 1

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    return {
        "concurrency": concurrency,
        "requests": len(lat),
        "structures": crystals[0],
        "structures_per_s": crystals[0] / seconds,
        "p50_s": percentile(lat, 50),
        "p99_s": percentile(lat, 99),
        "mean_s": statistics.fmean(lat) if lat else float("nan"),
        "errors": errors[0],
    }


def load_test(url: str, clients: int, total: int) -> dict:
    """A bounded mixed load: ``total`` requests from ``clients`` concurrent clients."""
    import requests

    def body(i: int) -> dict:
        b = {"num_samples": 1 + i % 4, "composition": COMPOSITIONS[i % len(COMPOSITIONS)], "steps": 5 + i % 3,
             "seed": i, "format": "cif" if i % 2 else "json"}
        if i % 5 == 0:
            b["sampler"] = "ddpm"
        if i % 7 == 0:
            b.update(exact_counts=False)
        if i % 11 == 0:
            b.update(composition=None, properties={"heat_ref": 0.3}, guidance=1.0)
        return b

    sessions = threading.local()

    def one(i: int) -> tuple[bool, float, int, str]:
        s = getattr(sessions, "s", None) or requests.Session()
        sessions.s = s
        t0 = time.perf_counter()
        try:
            r = s.post(url, json=body(i), timeout=300)
            ok = r.status_code == 200
            return ok, time.perf_counter() - t0, len(r.json()["structures"]) if ok else 0, "" if ok else r.text[:200]
        except Exception as exc:
            return False, time.perf_counter() - t0, 0, repr(exc)[:200]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(total)))
    wall = time.perf_counter() - t0
    lat = [r[1] for r in results if r[0]]
    errors = [r[3] for r in results if not r[0]]
    return {"clients": clients, "requests": total, "errors": len(errors), "error_samples": errors[:3],
            "structures": sum(r[2] for r in results), "structures_per_s": sum(r[2] for r in results) / wall,
            "p50_s": percentile(lat, 50), "p99_s": percentile(lat, 99), "wall_s": wall}


def run_precision(args, ckpt: str, port: int, precision: str) -> dict:
    """The offline ceiling, the sweep and the load test of one precision (both apps deployed, then deleted)."""
    import requests
    from ray import serve

    from deploy.app import application

    bound = offline_bound(ckpt, args.steps, args.threads, args.max_batch_size, precision, args.device)
    print(f"[{precision}] offline sampler, same model/threads, DDIM-{args.steps}: batch 1 "
          f"{bound['batch_1_structures_per_s']:.2f}, batch {args.max_batch_size} "
          f"{bound[f'batch_{args.max_batch_size}_structures_per_s']:.2f} structures/s -> ceiling of the batching "
          f"gain {bound['ratio']:.2f}x", flush=True)
    base = {"checkpoint": ckpt, "torch_threads": args.threads, "max_samples_per_request": 8,
            "device": args.device, "precision": precision, "engine": args.engine}
    # the two apps share the machine: one CPU each, half of the GPU each on a GPU machine
    resources = {"num_cpus": 1, **({"num_gpus": 0.5} if args.device == "cuda" else {})}
    apps = {f"batched-{precision}": args.max_batch_size, f"unbatched-{precision}": 1}
    for name, mbs in apps.items():
        # same max_ongoing_requests for both: the baseline differs only in max_batch_size (with Serve's
        # derived default of 8 the unbatched app would also queue requests at the proxy)
        serve.run(application({**base, "max_batch_size": mbs}, ray_actor_options=resources,
                              max_ongoing_requests=2 * args.max_batch_size), name=name, route_prefix=f"/{name}")
    batched, unbatched = apps
    info = requests.get(f"http://127.0.0.1:{port}/{batched}/v1/model", timeout=30).json()
    print(f"[{precision}] model: {info['checkpoint']} ({info['parameters']:,} params, {info['spec']['description']}, "
          f"{info['precision']}), DDIM-{args.steps}, 1 crystal per request; load average {os.getloadavg()}",
          flush=True)

    def body(cid: int, i: int) -> dict:
        return {"num_samples": 1, "composition": COMPOSITIONS[(cid + i) % len(COMPOSITIONS)], "steps": args.steps,
                "seed": cid * 100_000 + i, "format": "json"}

    model_keys = ("checkpoint", "parameters", "timesteps", "device", "precision", "engine")
    out: dict = {"model": {k: info[k] for k in model_keys},
                 "spec": info["spec"]["description"], "offline_bound": bound,
                 "sweep": {"batched": [], "unbatched": []}}
    try:
        for c in args.concurrency:  # the two apps alternate per level, so drifting background load hits both
            for kind, name in (("batched", batched), ("unbatched", unbatched)):
                url = f"http://127.0.0.1:{port}/{name}"
                before, t_before = requests.get(url + "/v1/stats", timeout=30).json(), time.perf_counter()
                r = closed_loop(url + "/v1/generate", c, args.seconds, args.warmup, body)
                after, t_after = requests.get(url + "/v1/stats", timeout=30).json(), time.perf_counter()
                # requests sharing a network evaluation, averaged over the evaluations of this window
                steps = after["steps"] - before["steps"]
                shared = sum(int(k) * v for k, v in after["step_requests_histogram"].items()) - \
                    sum(int(k) * v for k, v in before["step_requests_histogram"].items())
                r["mean_batch_requests"] = shared / max(steps, 1)
                # the device's share of the window spent in network evaluations, and their mean duration
                busy = after["step_seconds_total"] - before["step_seconds_total"]
                r["device_busy"] = busy / (t_after - t_before)
                r["mean_step_ms"] = 1e3 * busy / max(steps, 1)
                r["load_average"] = os.getloadavg()[0]
                out["sweep"][kind].append(r)
                print(f"[{precision}] {kind:>9} c={c:<3} {r['structures_per_s']:7.2f} structures/s  "
                      f"p50 {r['p50_s']:.3f} s  p99 {r['p99_s']:.3f} s  mean batch {r['mean_batch_requests']:.1f}  "
                      f"device busy {r['device_busy']:.0%}, {r['mean_step_ms']:.0f} ms/step  errors {r['errors']}  "
                      f"(load {r['load_average']:.1f})", flush=True)
        ratios = {}
        for b, u in zip(out["sweep"]["batched"], out["sweep"]["unbatched"]):
            ratios[str(b["concurrency"])] = b["structures_per_s"] / max(u["structures_per_s"], 1e-9)
        out["batched_over_unbatched"] = ratios
        print(f"[{precision}] batched / unbatched structures/s: " + ", ".join(f"c={k}: {v:.2f}x"
                                                                            for k, v in ratios.items()), flush=True)
        load = load_test(f"http://127.0.0.1:{port}/{batched}/v1/generate", args.load_clients, args.load_requests)
        out["load_test"] = load
        print(f"[{precision}] load test: {load['requests']} mixed requests from {load['clients']} clients in "
              f"{load['wall_s']:.1f} s, {load['structures_per_s']:.2f} structures/s, p50 {load['p50_s']:.2f} s, "
              f"p99 {load['p99_s']:.2f} s, errors {load['errors']} {load['error_samples'] or ''}", flush=True)
    finally:
        for name in apps:
            serve.delete(name)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="inference checkpoint (default: untrained tiny, Perov-5 size)")
    ap.add_argument("--steps", type=int, default=20, help="DDIM steps per request")
    ap.add_argument("--seconds", type=float, default=20.0, help="timed window per (app, concurrency)")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds before the timed window")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per replica")
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    ap.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"],
                    help="network precision of both apps, one sweep each (bf16 on a CPU: bf16 weights)")
    ap.add_argument("--engine", choices=("process", "thread"), default="process",
                    help="where each replica runs its denoising loop (deploy/settings.py)")
    ap.add_argument("--load-clients", type=int, default=48)
    ap.add_argument("--load-requests", type=int, default=240)
    ap.add_argument("--out", default=None, help="write the results as JSON")
    args = ap.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"

    import ray
    from ray import serve

    tmp = tempfile.TemporaryDirectory()
    ckpt = args.checkpoint or random_checkpoint(Path(tmp.name) / "inference.pt")
    port = free_port()
    from unimat_dist.ray_local import init_ray

    init_ray("local", num_cpus=2, num_gpus=1 if args.device == "cuda" else 0, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})

    results: dict = {"steps": args.steps, "seconds": args.seconds, "torch_threads": args.threads, "engine": args.engine,
                     "runs": {}}
    try:
        for precision in args.precision:
            # one precision at a time (both apps of a precision share the machine, never two precisions)
            results["runs"][precision] = run_precision(args, ckpt, port, precision)
        results["load_average_end"] = os.getloadavg()
    finally:
        serve.shutdown()
        ray.shutdown()
        tmp.cleanup()
    print("summary (batched / unbatched structures/s at each concurrency):")
    for precision, run in results["runs"].items():
        print(f"  {precision}: ceiling {run['offline_bound']['ratio']:.2f}x; " + ", ".join(
            f"c={k}: {v:.2f}x" for k, v in run.get("batched_over_unbatched", {}).items()))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    errors = [run.get("load_test", {}).get("errors", 1) for run in results["runs"].values()]
    return 0 if errors and not any(errors) else 1


if __name__ == "__main__":
    sys.exit(main())
