"""A bounded soak of the generation service on 127.0.0.1: good and hostile clients together (issue 16).

    python bench/bench_soak.py                         # 120 s of traffic, ~4 min in all on 2 CPU cores
    python bench/bench_soak.py --duration 30 --clients 32
    python -m bench soak --out bench/results/soak

The service is started the way ``unimat serve`` starts it (``deploy.app.start_service``: a
local Ray bound to 127.0.0.1, Serve's proxy on a free loopback port, one replica, the service's default
settings) on the released Perov-5 checkpoint. Then, for ``--duration`` seconds:

* ``--clients`` (>= 32) closed-loop clients, each drawing its next request from a fixed mix (seeded per
  client): small good requests (1 crystal, DDIM-20: their latency is the responsiveness figure), medium
  good ones (2-4 crystals, exact counts / element types / unconditional, DDIM or DDPM, CIF or JSON), and
  hostile ones: idle connections that declare a 1,000-byte ``Content-Length`` and send none of the body, or
  its first 17 bytes, then nothing (held up to ``--idle-hold`` seconds), malformed JSON, an empty body,
  huge numbers (``1e400``, a 5,000-digit integer, ``1e308`` seeds and property targets, NaN/Infinity),
  lone surrogates (escaped and as raw bytes) and invalid UTF-8, a body over the size limit, deep nesting,
  unknown fields, wrong types, over-budget requests (64 x DDPM-1000, 65 crystals, 100,000 steps), wrong
  methods and paths;
* one more client keeps the largest legal request running (64 crystals, DDPM at the most steps the
  service accepts, found by asking first), one at a time, for the whole soak;
* a health poller sends ``GET /healthz`` every ``--health-every`` seconds.

Reported (JSON + a short markdown, ``--out`` without extension): every status per scenario, the count of
5xx answers (target 0) and of client-side failures (connection reset, timeout), whether /healthz answered
200 throughout and its worst latency, p50/p99 latency of the small requests (and the same small request
alone, before the soak, as the baseline), and the resident memory of the replica process and of its
sampling process before, at the peak, and after. Slow good requests (over max(5 s, 10x the alone p99)) are
matched against the completions of the largest request: one that finished within 1 s of it most likely
waited for it (e.g. handed over in the same ``@serve.batch`` call) rather than for the device. Everything
stops at the deadline: clients start nothing after it and every request has a client timeout, so the run
is bounded by duration + ``--idle-hold`` + the largest request's time + start-up.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on 127.0.0.1 (NOTES-stack)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from bench_fairness import largest_legal  # noqa: E402
from bench_serve import free_port, percentile  # noqa: E402

HOST = "127.0.0.1"
COMPOSITIONS = ["SrTiO3", "BaTiO3", "CaZrO3", "LaAlO3", "KNbO3", "NaTaO3", "PbTiO3", "BiFeO3"]
SMALL = {"num_samples": 1, "sampler": "ddim", "steps": 20, "format": "json"}


# ------------------------------------------------------------------ the request mix
def _json(obj) -> bytes:
    return json.dumps(obj).encode()


def hostile_bodies() -> dict[str, bytes]:
    """Bodies a hostile or broken client sends to POST /v1/generate (each must get a 4xx, never a 5xx)."""
    return {
        "malformed_json": b'{"num_samples": 1, "composition": "SrTiO3",',
        "not_an_object": b'[1, 2, 3]',
        "empty_body": b"",
        "huge_float": b'{"num_samples": 1e400, "composition": "SrTiO3"}',
        "huge_int": b'{"num_samples": 1' + b"0" * 5000 + b', "composition": "SrTiO3"}',
        "huge_seed": b'{"num_samples": 1, "composition": "SrTiO3", "seed": 1e308}',
        "huge_property": b'{"num_samples": 1, "properties": {"heat_ref": 1e308}, "guidance": 1.0, "steps": 5}',
        "nan_guidance": b'{"num_samples": 1, "composition": "SrTiO3", "guidance": NaN, "steps": 5}',
        "infinite_eta": b'{"num_samples": 1, "composition": "SrTiO3", "eta": Infinity, "steps": 5}',
        "negative_steps": _json({"num_samples": 1, "composition": "SrTiO3", "steps": -5}),
        "lone_surrogate_escaped": b'{"num_samples": 1, "composition": "Sr\\ud800TiO3", "steps": 5}',
        "lone_surrogate_raw": '{"num_samples": 1, "composition": "Sr\ud800TiO3", "steps": 5}'.encode(
            "utf-8", "surrogatepass"),
        "invalid_utf8": b'{"num_samples": 1, "composition": "Sr\xff\xfeTiO3", "steps": 5}',
        "oversized_body": _json({"num_samples": 1, "composition": "SrTiO3", "pad": "x" * 70_000}),
        "deep_nesting": b"[" * 50_000 + b"]" * 50_000,
        "unknown_field": _json({"num_samples": 1, "composition": "SrTiO3", "temperature": 300}),
        "wrong_type": _json({"num_samples": "many", "composition": ["Sr", "Ti"]}),
        "unknown_element": _json({"num_samples": 1, "composition": "Xx2O3", "steps": 5}),
        "zero_count": _json({"num_samples": 1, "composition": {"Sr": 0, "Ti": 1, "O": 3}, "steps": 5}),
        "over_budget_ddpm1000": _json({"num_samples": 64, "composition": "SrTiO3", "sampler": "ddpm",
                                       "steps": 1000}),
        "too_many_samples": _json({"num_samples": 65, "composition": "SrTiO3", "steps": 5}),
        "too_many_steps": _json({"num_samples": 1, "composition": "SrTiO3", "steps": 100_000}),
    }


MIX = [  # (scenario, weight): about half good requests, half hostile
    ("small", 40), ("medium", 12), ("hostile_body", 40), ("idle_body", 3), ("wrong_route", 5),
]


def medium_body(rng: random.Random) -> dict:
    kind = rng.randrange(4)
    b = {"num_samples": rng.randint(2, 4), "sampler": "ddim", "steps": rng.choice([20, 50]),
         "seed": rng.randrange(2**31), "format": rng.choice(["cif", "json"])}
    if kind == 0:
        b["composition"] = rng.choice(COMPOSITIONS)
    elif kind == 1:
        b.update(composition=rng.choice(COMPOSITIONS), exact_counts=False)
    elif kind == 2:
        b["sampler"], b["steps"] = "ddpm", 20
    return b  # kind 3: unconditional (composition drawn from the model's prior)


# ------------------------------------------------------------------ one request, at the byte level
def post_raw(port: int, path: str, body: bytes, timeout: float, method: str = "POST",
             content_type: str = "application/json") -> int:
    """The status of one request sent with ``http.client`` (bytes exactly as given)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body if method == "POST" else None,
                     headers={"Content-Type": content_type} if method == "POST" else {})
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


def idle_body(port: int, hold: float, partial: bool) -> tuple[str, float]:
    """Declare a 1,000-byte body and send none of it (``partial``: its first 17 bytes), then nothing: (what
    the server did -- its status, a close without an answer, or nothing -- and the seconds until it did it
    or we gave up)."""
    t0 = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=hold) as s:
        s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n" + (b'{"num_samples": 1' if partial else b""))
        try:
            data = s.recv(4096)
        except socket.timeout:
            return "held_open", time.perf_counter() - t0
        if not data:
            return "closed_without_answer", time.perf_counter() - t0
        line = data.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split()
        return (parts[1] if len(parts) > 1 else line[:40]), time.perf_counter() - t0


# ------------------------------------------------------------------ memory of the replica
def replica_pids(stats_url: str) -> dict[str, int]:
    """The replica's process (its Ray worker, titled ServeReplica:...) and its sampling process."""
    import psutil
    import requests

    out = {}
    try:
        engine = requests.get(stats_url, timeout=30).json().get("engine", {})
        if engine.get("pid"):
            out["sampling_process"] = int(engine["pid"])
    except Exception:  # noqa: BLE001 - reported as missing
        pass
    for p in psutil.process_iter(["pid", "cmdline", "name"]):
        text = " ".join(p.info.get("cmdline") or []) + " " + (p.info.get("name") or "")
        if "ServeReplica" in text and "UniMatGenerator" in text:
            out["replica"] = p.info["pid"]
    return out


def rss_mb(pids: dict[str, int]) -> dict[str, float | None]:
    import psutil

    out = {}
    for name, pid in pids.items():
        try:
            out[name] = psutil.Process(pid).memory_info().rss / 2**20
        except psutil.Error:
            out[name] = None
    return out


# ------------------------------------------------------------------ the soak
def soak(port: int, args, big: dict) -> dict:
    import requests

    base = f"http://{HOST}:{port}"
    deadline = time.perf_counter() + args.duration
    lock = threading.Lock()
    statuses: dict[str, Counter] = defaultdict(Counter)
    latencies: dict[str, list[float]] = defaultdict(list)
    ends: dict[str, list[float]] = defaultdict(list)  # completion times of the 200s (perf_counter)
    idle_outcomes: list[tuple[str, float]] = []
    bodies = hostile_bodies()

    def record(scenario: str, status, seconds: float) -> None:
        with lock:
            statuses[scenario][str(status)] += 1
            if status == 200:
                latencies[scenario].append(seconds)
                ends[scenario].append(time.perf_counter())

    def client(cid: int) -> None:
        rng = random.Random(cid)
        session = requests.Session()
        names, weights = zip(*MIX)
        while time.perf_counter() < deadline:
            scenario = rng.choices(names, weights)[0]
            t0 = time.perf_counter()
            try:
                if scenario == "small":
                    body = {**SMALL, "composition": rng.choice(COMPOSITIONS), "seed": rng.randrange(2**31)}
                    status = session.post(base + "/v1/generate", json=body, timeout=args.timeout).status_code
                elif scenario == "medium":
                    status = session.post(base + "/v1/generate", json=medium_body(rng),
                                          timeout=args.timeout).status_code
                elif scenario == "hostile_body":
                    scenario = "hostile:" + rng.choice(sorted(bodies))
                    status = post_raw(port, "/v1/generate", bodies[scenario[8:]], args.timeout)
                elif scenario == "idle_body":
                    partial = rng.random() < 0.5
                    scenario = "idle_body:" + ("partial" if partial else "none")
                    outcome = idle_body(port, args.idle_hold, partial)
                    with lock:
                        idle_outcomes.append(outcome)
                    status = outcome[0]
                else:  # wrong route or method
                    method, path = rng.choice([("GET", "/v1/generate"), ("POST", "/v1/nothing"),
                                               ("POST", "/v1/model"), ("GET", "/" + "a" * 5000)])
                    scenario = f"route:{method} {path[:20]}"
                    status = post_raw(port, path, b"{}", args.timeout, method=method)
            except Exception as exc:  # noqa: BLE001 - the client-side failure is the measurement
                status = f"client_error:{type(exc).__name__}"
                session.close()
                session = requests.Session()
            record(scenario, status, time.perf_counter() - t0)

    def maximal() -> None:
        session = requests.Session()
        k = 0
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:  # a client timeout past the deadline: abandoned (the service cancels its job)
                r = session.post(base + "/v1/generate", json={**big, "seed": k, "format": "json"},
                                 timeout=max(1.0, deadline - t0 + 30.0))
                status = r.status_code
            except Exception as exc:  # noqa: BLE001
                status = f"client_error:{type(exc).__name__}"
                session.close()
                session = requests.Session()
            k += 1
            record("maximal_legal", status, time.perf_counter() - t0)

    health: list[tuple[float, object]] = []

    def poll_health() -> None:
        session = requests.Session()
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                status = session.get(base + "/healthz", timeout=30).status_code
            except Exception as exc:  # noqa: BLE001
                status = f"client_error:{type(exc).__name__}"
                session.close()
                session = requests.Session()
            health.append((time.perf_counter() - t0, status))
            time.sleep(max(0.0, args.health_every - (time.perf_counter() - t0)))

    peak: dict[str, float] = {}
    pids = replica_pids(base + "/v1/stats")

    def watch_memory() -> None:
        while time.perf_counter() < deadline:
            for k, v in rss_mb(pids).items():
                if v is not None:
                    peak[k] = max(peak.get(k, 0.0), v)
            time.sleep(2.0)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(args.clients)]
    threads += [threading.Thread(target=f, daemon=True) for f in (maximal, poll_health, watch_memory)]
    t_start = time.perf_counter()
    for t in threads:
        t.start()
    # every request has a client timeout and nothing starts after the deadline
    bound = args.duration + max(args.timeout, args.idle_hold) + 60
    for t in threads:
        t.join(max(1.0, t_start + bound - time.perf_counter()))
    stragglers = sum(t.is_alive() for t in threads)
    wall = time.perf_counter() - t_start

    all_status = Counter()
    for c in statuses.values():
        all_status.update(c)
    five_xx = {s: {k: v for k, v in c.items() if k.startswith("5")} for s, c in statuses.items()}
    five_xx = {s: c for s, c in five_xx.items() if c}
    client_errors = {s: {k: v for k, v in c.items() if k.startswith("client_error")} for s, c in statuses.items()}
    client_errors = {s: c for s, c in client_errors.items() if c}
    h_lat = [s for s, _ in health]
    h_bad = [st for _, st in health if st != 200]
    small = latencies["small"]
    # Where the slow good requests come from: a small request that finished together with a largest legal
    # request (within 1 s) most likely waited for it rather than for the device
    slow_cut = max(5.0, 10 * args.alone_p99)
    big_ends = ends["maximal_legal"]
    slow = [t for name in ("small", "medium") for t, lat in zip(ends[name], latencies[name]) if lat > slow_cut]
    slow_with_big = sum(any(abs(t - b) <= 1.0 for b in big_ends) for t in slow)
    return {
        "wall_s": wall, "stragglers": stragglers,
        "requests": sum(all_status.values()), "statuses": {s: dict(c) for s, c in sorted(statuses.items())},
        "five_xx_total": sum(sum(c.values()) for c in five_xx.values()), "five_xx": five_xx,
        "client_errors": client_errors,
        "healthz": {"polls": len(health), "non_200": len(h_bad), "non_200_samples": [str(x) for x in h_bad[:5]],
                    "max_latency_s": max(h_lat) if h_lat else None,
                    "p99_latency_s": percentile(h_lat, 99)},
        "small": {"ok": len(small), "p50_s": percentile(small, 50), "p99_s": percentile(small, 99),
                  "max_s": max(small) if small else None},
        "medium": {"ok": len(latencies["medium"]), "p99_s": percentile(latencies["medium"], 99)},
        "slow_good_requests": {"threshold_s": slow_cut, "count": len(slow),
                               "finished_within_1s_of_a_largest_request": slow_with_big},
        "maximal_legal": {"request": big, "ok": len(latencies["maximal_legal"]),
                          "mean_s": statistics.fmean(latencies["maximal_legal"]) if latencies["maximal_legal"]
                          else None},
        "idle_connections": {"count": len(idle_outcomes), "outcomes": dict(Counter(o for o, _ in idle_outcomes)),
                             "max_seconds": max((s for _, s in idle_outcomes), default=None)},
        "rss_peak_mb": peak, "pids": pids,
    }


def small_alone(port: int, seconds: float) -> dict:
    """The small request alone (one client, back to back): the baseline of the soak's small-request p99."""
    import requests

    session, lat, rng = requests.Session(), [], random.Random(0)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        body = {**SMALL, "composition": rng.choice(COMPOSITIONS), "seed": rng.randrange(2**31)}
        if session.post(f"http://{HOST}:{port}/v1/generate", json=body, timeout=120).status_code == 200:
            lat.append(time.perf_counter() - t0)
    return {"requests": len(lat), "p50_s": percentile(lat, 50), "p99_s": percentile(lat, 99)}


def code_version() -> dict:
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
        except Exception:  # noqa: BLE001
            return ""
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted": [line[3:] for line in git("status", "--porcelain").splitlines()  # the serving code
                            if line[3:].startswith(("deploy/", "unimat_dist/generation/", "unimat_dist/inference/",
                                                    "unimat_dist/cli/generate.py"))]}


def markdown(r: dict) -> str:
    s, h, m = r["soak"], r["soak"]["healthz"], r["soak"]["maximal_legal"]
    rss = r["rss_mb"]
    lines = [
        "# Soak of the generation service (bench/bench_soak.py)", "",
        f"{r['started']}, code {r['code']['commit']}"
        + (f" + uncommitted changes in {', '.join(r['code']['uncommitted'])}" if r['code']['uncommitted'] else "")
        + f"; {r['machine']}.",
        f"Released checkpoint `{Path(r['checkpoint']).name}`, `unimat serve`-equivalent service (one replica, "
        f"default settings) on 127.0.0.1; {r['clients']} mixed clients + 1 client keeping the largest legal request "
        f"({m['request']['num_samples']} x {m['request']['sampler'].upper()}-{m['request']['steps']}) running + a "
        f"/healthz poller, for {r['duration_s']:.0f} s ({s['wall_s']:.0f} s until the last client returned).", "",
        "| measure | value | target |", "|---|---|---|",
        f"| requests answered or failed | {s['requests']} | |",
        f"| 5xx answers | **{s['five_xx_total']}** {json.dumps(s['five_xx']) if s['five_xx'] else ''} | 0 |",
        f"| client-side failures (reset, timeout) | {sum(sum(c.values()) for c in s['client_errors'].values())} "
        f"{json.dumps(s['client_errors']) if s['client_errors'] else ''} | 0 |",
        f"| /healthz: polls, non-200, max latency | {h['polls']}, {h['non_200']}, {h['max_latency_s']:.3f} s | "
        "all 200 |",
        f"| small request (1 crystal DDIM-20) p50 / p99, soak | {s['small']['p50_s']:.3f} / "
        f"{s['small']['p99_s']:.3f} s "
        f"({s['small']['ok']} ok) | |",
        f"| the same alone, before the soak (p50 / p99) | {r['alone']['p50_s']:.3f} / {r['alone']['p99_s']:.3f} s | |",
        f"| small p99 soak / alone | {s['small']['p99_s'] / r['alone']['p99_s']:.1f}x | |",
        f"| small/medium requests slower than {s['slow_good_requests']['threshold_s']:.0f} s; of them finished "
        f"within 1 s of a largest legal request | {s['slow_good_requests']['count']}; "
        f"{s['slow_good_requests']['finished_within_1s_of_a_largest_request']} | 0 |",
        f"| largest legal requests completed (mean s) | {m['ok']} "
        f"({m['mean_s']:.1f} s) | |" if m["mean_s"] else "| largest legal requests completed | 0 | |",
        f"| idle connections (declared body not sent): outcomes | {json.dumps(s['idle_connections']['outcomes'])}"
        f" | 408 |",
        f"| RSS replica MB: before / peak / after | {rss['before'].get('replica', float('nan')):.0f} / "
        f"{s['rss_peak_mb'].get('replica', float('nan')):.0f} / {rss['after'].get('replica', float('nan')):.0f} | |",
        f"| RSS sampling process MB: before / peak / after | {rss['before'].get('sampling_process', float('nan')):.0f}"
        f" / {s['rss_peak_mb'].get('sampling_process', float('nan')):.0f} / "
        f"{rss['after'].get('sampling_process', float('nan')):.0f} | |",
        "", "Statuses per scenario:", "",
        "| scenario | statuses |", "|---|---|",
    ]
    lines += [f"| {k} | {json.dumps(v)} |" for k, v in s["statuses"].items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "perov5_transformer_cpu.pt"))
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of traffic")
    ap.add_argument("--clients", type=int, default=32, help="mixed clients (plus the large request and /healthz)")
    ap.add_argument("--idle-hold", type=float, default=30.0, help="longest an idle-body client waits, seconds")
    ap.add_argument("--timeout", type=float, default=120.0, help="client timeout of every other request, seconds")
    ap.add_argument("--health-every", type=float, default=0.5, help="seconds between /healthz polls")
    ap.add_argument("--alone-seconds", type=float, default=15.0, help="baseline window of the small request alone")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak"), help="path without extension")
    args = ap.parse_args()

    import ray
    from ray import serve

    from deploy.app import start_service

    port = free_port()
    result: dict = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "code": code_version(),
                    "checkpoint": args.checkpoint, "clients": args.clients, "duration_s": args.duration,
                    "machine": f"{os.cpu_count()} CPU cores (shared with other jobs; load average at start "
                               f"{os.getloadavg()[0]:.1f})"}
    try:
        t0 = time.perf_counter()
        url = start_service({"checkpoint": args.checkpoint}, host=HOST, port=port, num_cpus=2)
        print(f"service up at {url} in {time.perf_counter() - t0:.0f} s", flush=True)
        big, tried = largest_legal(url + "/v1/generate", 64)
        big = {k: big[k] for k in ("num_samples", "composition", "sampler", "steps")}
        time.sleep(2.0)  # the abandoned probe leaves the loop
        print(f"largest legal request: {big} (probe: {tried})", flush=True)
        result["alone"] = small_alone(port, args.alone_seconds)
        print(f"small request alone: {result['alone']}", flush=True)
        pids = replica_pids(url + "/v1/stats")
        result["rss_mb"] = {"before": rss_mb(pids)}
        args.alone_p99 = result["alone"]["p99_s"]
        result["soak"] = soak(port, args, big)
        time.sleep(2.0)
        result["rss_mb"]["after"] = rss_mb(pids)
        result["load_average_end"] = os.getloadavg()
    finally:
        serve.shutdown()
        ray.shutdown()
    s = result["soak"]
    print(f"soak: {s['requests']} requests, 5xx {s['five_xx_total']} {s['five_xx'] or ''}, client errors "
          f"{s['client_errors'] or 0}; /healthz {s['healthz']['polls']} polls, {s['healthz']['non_200']} not 200, max "
          f"{s['healthz']['max_latency_s']:.3f} s; small p99 {s['small']['p99_s']:.3f} s (alone "
          f"{result['alone']['p99_s']:.3f} s: {s['small']['p99_s'] / result['alone']['p99_s']:.1f}x); RSS "
          f"{result['rss_mb']} peak {s['rss_peak_mb']}; idle {s['idle_connections']}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0 if s["five_xx_total"] == 0 and s["healthz"]["non_200"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
