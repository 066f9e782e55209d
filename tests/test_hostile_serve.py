"""The generation service under hostile clients (issue 16): a real Ray Serve application on 127.0.0.1.

* a bounded slowloris (64 sockets that declare a body and never send it) costs each of them one replica
  slot for ``body_timeout_s`` and a 408, never the service: /healthz and a small /v1/generate answer meanwhile;
* inputs that used to be plain-text 500s (lone surrogate, 5,000-digit integers, 10^400, 1e400), zero counts
  in either spelling, property targets of +-1e308, over-budget requests and proxy-hint headers are 4xx JSON
  errors, counted in /v1/stats and Ray's Prometheus series;
* ``unimat serve`` stops on SIGTERM within a bound and takes its local Ray (raylet, GCS, agents) with it.

The model is the untrained perturbed tiny U-Net (6 elements, L = 4, T = 50, one property ``band_gap`` with
mean 1.0 and std 0.5), saved as an inference checkpoint: it loads in a second and steps in milliseconds,
and hostile-input handling does not depend on its crystals. All traffic is bounded in count and time.
"""
from __future__ import annotations

import http.client
import json
import logging
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from generation_fixtures import free_port
from unimat_dist.ray_local import init_ray

ROOT = Path(__file__).resolve().parents[1]
BODY_TIMEOUT_S = 2.0  # short, so the slowloris test takes seconds; the default is 10
BUDGET = 100  # sample-steps per request (default 6400); the model has T = 50
SIGMA = 10.0  # band_gap accepted within 1.0 +- 10 x 0.5 = [-4, 6]
IDLE_CLIENTS = 64  # = the replica's max_ongoing_requests (2 x max_batch_size 32), as in serve_config.yaml


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from generation_fixtures import save_perturbed_tiny_checkpoint

    return save_perturbed_tiny_checkpoint(tmp_path_factory.mktemp("hostile") / "inference.pt")


class Service:
    def __init__(self, url: str, port: int, metrics_url: str) -> None:
        self.url, self.port, self.metrics_url = url, port, metrics_url

    def post(self, body, headers=None, timeout=60):
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return requests.post(self.url + "/v1/generate", data=data, timeout=timeout,
                             headers={"Content-Type": "application/json", **(headers or {})})

    def get(self, path, timeout=30):
        return requests.get(self.url + path, timeout=timeout)


@pytest.fixture(scope="module")
def service(checkpoint):
    import ray
    from ray import serve

    from deploy.app import start_service

    metrics_port, http_port = free_port(), free_port()
    init_ray("local", num_cpus=2, log_to_driver=False,
             _metrics_export_port=metrics_port)
    try:
        settings = {"checkpoint": str(checkpoint), "torch_threads": 1, "engine": "thread", "max_batch_size": 32,
                    "max_samples_per_request": 8, "max_batch_samples": 64, "body_timeout_s": BODY_TIMEOUT_S,
                    "max_sample_steps": BUDGET, "max_property_sigma": SIGMA,
                    "max_request_bytes": 8192}  # more than a 5,000-digit literal
        url = start_service(settings, host="127.0.0.1", port=http_port, name="hostile", cpus_per_replica=1)
        yield Service(url, http_port, f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        serve.shutdown()
        ray.shutdown()


def _error(r, status: int, type_: str, field=None) -> str:
    """The error message of a JSON error response, after checking its status, type and field."""
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.headers
    err = r.json()["error"]
    assert err["type"] == type_ and err.get("field") == field, err
    return err["message"]


# ----------------------------------------------------------------------------------------- slowloris
def test_idle_bodies_cost_one_slot_for_a_bounded_time_never_the_service(service):
    """64 sockets send the headers of a POST with Content-Length and nothing else: together they hold every
    max_ongoing_requests slot, each for body_timeout_s, then get a 408 JSON; /healthz and a small
    /v1/generate sent meanwhile (with 16 more sockets holding half-sent headers) answer within a few seconds."""
    before = service.get("/v1/stats").json()
    head = (f"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1:{service.port}\r\nContent-Type: application/json\r\n"
            "Content-Length: 200\r\n\r\n").encode()
    idle, partial = [], []
    try:
        t0 = time.perf_counter()
        for _ in range(IDLE_CLIENTS):
            s = socket.create_connection(("127.0.0.1", service.port), timeout=30)
            s.sendall(head)
            idle.append(s)
        # classic slowloris: headers never finished; these stay in the proxy (no replica slot) meanwhile
        for _ in range(16):
            s = socket.create_connection(("127.0.0.1", service.port), timeout=30)
            s.sendall(head[:40])
            partial.append(s)
        time.sleep(0.5)  # the proxy hands them to the replica
        with ThreadPoolExecutor(2) as pool:
            def timed(call):
                t = time.perf_counter()
                r = call()
                return r, time.perf_counter() - t
            health = pool.submit(timed, lambda: service.get("/healthz", timeout=30))
            small = pool.submit(timed, lambda: service.post({"num_samples": 1, "composition": "SrTiO3", "steps": 3,
                                                             "seed": 0, "format": "json"}, timeout=30))
            (h, h_s), (g, g_s) = health.result(), small.result()
        assert h.status_code == 200 and h.json()["status"] == "ok"
        assert g.status_code == 200, g.text
        assert g.json()["validity"]["matches_request"] == 1
        # they waited at most for the idle clients' slots to come back, not for the idle clients
        assert h_s < BODY_TIMEOUT_S + 5 and g_s < BODY_TIMEOUT_S + 8, (h_s, g_s)
        # every idle client got its 408, as JSON, within the bound
        for s in idle:
            s.settimeout(BODY_TIMEOUT_S + 20)
            resp = http.client.HTTPResponse(s)
            resp.begin()
            assert resp.status == 408 and resp.getheader("content-type") == "application/json"
            body = json.loads(resp.read())
            assert body["error"]["type"] == "request_timeout"
            assert body["error"]["message"] == f"the request body did not arrive within {BODY_TIMEOUT_S:g} s " \
                                               "(body_timeout_s)"
        elapsed = time.perf_counter() - t0
        assert elapsed < BODY_TIMEOUT_S + 25, elapsed
    finally:
        for s in idle + partial:
            s.close()
    stats = service.get("/v1/stats").json()
    assert stats["requests"]["/v1/generate 408"] - before["requests"].get("/v1/generate 408", 0) == IDLE_CLIENTS
    assert stats["errors_by_type"]["request_timeout"] - before["errors_by_type"].get("request_timeout", 0) \
        == IDLE_CLIENTS
    assert service.get("/healthz").status_code == 200
    print(f"64 idle clients: /healthz in {h_s:.2f} s, a small /v1/generate in {g_s:.2f} s, all 408s by {elapsed:.1f} s")


def test_a_body_over_the_size_limit_is_refused_while_streaming(service):
    """Chunked (no Content-Length): the replica stops reading at max_request_bytes."""
    def chunks():
        yield b'{"composition": "'
        for _ in range(64):
            yield b"O" * 1024
        yield b'"}'

    r = requests.post(service.url + "/v1/generate", data=chunks(), headers={"Content-Type": "application/json"},
                      timeout=30)
    assert _error(r, 413, "request_too_large") == "request body exceeds the limit of 8192 bytes"


# ----------------------------------------------------------------------------------------- hostile input
DIGITS = "9" * 5000
HOSTILE = [
    # (raw body, status, type, field, message) — the first five were plain-text 500s before issue 16
    (b'{"composition": "\\ud800"}', 400, "malformed_json", "composition",
     "composition: a string holds a lone UTF-16 surrogate (e.g. \\ud800); strings must be valid Unicode"),
    (f'{{"num_samples": {DIGITS}}}'.encode(), 422, "invalid_request", "num_samples",
     "num_samples: the number 99999999999999999999...99999999 (5000 characters) is out of range"),
    (f'{{"composition": {{"Sr": {DIGITS}, "O": 1}}}}'.encode(), 422, "invalid_request", "composition",
     "composition.Sr: the number 99999999999999999999...99999999 (5000 characters) is out of range"),
    (f'{{"composition": {{"Sr": 1{"0" * 400}}}}}'.encode(), 422, "invalid_request", "composition",
     "composition.Sr: the number 10000000000000000000...00000000 (401 characters) is out of range"),
    (b'{"composition": {"Sr": 1e400}}', 422, "invalid_request", "composition",
     "composition.Sr: the number 1e400 is out of range"),
    (b'{"composition": "Sr1e400TiO3"}', 422, "invalid_request", "composition",
     "composition: the count of Sr (inf) exceeds the limit of 1,000,000"),
    (b'{"properties": {"band_gap": 1e400}}', 422, "invalid_request", "properties.band_gap",
     "properties.band_gap: the number 1e400 is out of range"),
    # one rule for zero counts, whichever way they are written
    (b'{"composition": "Sr0TiO3"}', 422, "invalid_request", "composition",
     "composition: the count of Sr must be a positive number, got 0; leave an element out instead"),
    (b'{"composition": {"Sr": 0, "Ti": 1, "O": 3}}', 422, "invalid_request", "composition",
     "composition: the count of Sr must be a positive number, got 0; leave an element out instead"),
    # property targets within the training mean +- 10 std
    (b'{"properties": {"band_gap": 1e308}, "guidance": 1.0}', 422, "limit_exceeded", "properties.band_gap",
     "properties.band_gap: 1e+308 is outside [-4, 6], the range this model accepts (its training mean +- 10 std)"),
    (b'{"properties": {"band_gap": -1e308}, "guidance": 1.0}', 422, "limit_exceeded", "properties.band_gap",
     "properties.band_gap: -1e+308 is outside [-4, 6], the range this model accepts (its training mean +- 10 std)"),
    # the compute budget (T = 50: a DDPM request of 3 samples is 150 sample-steps)
    (b'{"num_samples": 3, "sampler": "ddpm"}', 422, "limit_exceeded", "num_samples",
     "num_samples x steps = 3 x 50 = 150 sample-steps exceeds this service's compute budget of 100 per request "
     "(max_sample_steps); ask for fewer samples or steps"),
]


def test_hostile_inputs_are_4xx_json_errors_and_counted(service):
    before = service.get("/v1/stats").json()
    for body, status, type_, field, message in HOSTILE:
        assert _error(service.post(body), status, type_, field) == message, body[:60]
    # a Serve proxy override from a client: refused before any work
    r = service.post({"num_samples": 1}, headers={"x-request-disconnect-disabled": "?1"})
    assert _error(r, 400, "header_not_allowed") == (
        "the x-request-disconnect-disabled header is reserved for a load balancer in front of the service; "
        "send the request without it")
    r = service.post({"num_samples": 1}, headers={"x-request-timeout-seconds": "0"})
    assert "x-request-timeout-seconds" in _error(r, 400, "header_not_allowed")
    # within the limits: at the budget exactly, and a property target inside its range
    ok = service.post({"num_samples": 2, "sampler": "ddpm", "composition": "SrTiO3", "seed": 1, "format": "json"})
    assert ok.status_code == 200 and ok.json()["steps"] == 50 and len(ok.json()["structures"]) == 2, ok.text
    ok = service.post({"num_samples": 1, "properties": {"band_gap": 5.9}, "guidance": 1.0, "steps": 3, "seed": 1})
    assert ok.status_code == 200, ok.text
    # the limits are published
    limits = service.get("/v1/model").json()["limits"]
    assert limits["max_sample_steps"] == BUDGET and limits["body_timeout_s"] == BODY_TIMEOUT_S
    assert limits["property_ranges"] == {"band_gap": [-4.0, 6.0]} and limits["max_property_sigma"] == SIGMA
    assert limits["max_count_per_element"] == 1_000_000
    # counted by status and type; nothing was an internal error
    stats = service.get("/v1/stats").json()

    def new(table, key):
        return stats[table].get(key, 0) - before[table].get(key, 0)

    assert new("requests", "/v1/generate 400") == 3 and new("requests", "/v1/generate 422") == len(HOSTILE) - 1
    assert new("errors_by_type", "malformed_json") == 1 and new("errors_by_type", "header_not_allowed") == 2
    assert new("errors_by_type", "invalid_request") == 8 and new("errors_by_type", "limit_exceeded") == 3
    assert "internal" not in stats["errors_by_type"] and "/v1/generate 500" not in stats["requests"]
    # ... and in Ray's Prometheus series (reported every few seconds), with the 408s of the slowloris test
    deadline, text = time.time() + 60, ""
    while time.time() < deadline:
        text = requests.get(service.metrics_url, timeout=10).text
        if all(re.search(rf'ray_unimat_serve_errors_total\{{[^}}]*type="{t}"', text)
               for t in ("malformed_json", "header_not_allowed", "limit_exceeded")):
            break
        time.sleep(2)
    for status in ("400", "422"):
        assert re.search(rf'ray_unimat_serve_requests_total\{{[^}}]*status="{status}"', text), status
    assert re.search(r'ray_unimat_serve_errors_total\{[^}]*type="header_not_allowed"', text)


def test_an_unhandled_exception_is_a_json_500_that_is_logged(caplog):
    """The app's last-resort handler (for anything outside the routes' own guards, which also count it):
    JSON naming only the exception's class, the traceback in the log."""
    import asyncio

    from starlette.requests import Request

    from deploy.app import _unhandled

    request = Request({"type": "http", "method": "GET", "path": "/v1/x", "headers": [], "query_string": b""})
    logger = logging.getLogger("ray.serve")  # Ray's logger does not propagate to the root caplog listens on
    logger.addHandler(caplog.handler)
    try:
        r = asyncio.run(_unhandled(request, KeyError("secret internals")))
    finally:
        logger.removeHandler(caplog.handler)
    assert r.status_code == 500 and r.media_type == "application/json"
    assert json.loads(r.body) == {"error": {"type": "internal",
                                            "message": "internal error (KeyError); the service logged it"}}
    assert "unhandled error in /v1/x" in caplog.text and "secret internals" in caplog.text


# ----------------------------------------------------------------------------------------- SIGTERM
def test_unimat_serve_stops_on_sigterm_with_its_local_ray(tmp_path):
    """``unimat serve`` with the released Perov-5 checkpoint as a subprocess: SIGTERM (what Kubernetes and
    systemd send) ends it within a bound, exit status 0, and none of the Ray processes it started remain."""
    import psutil

    port = free_port()
    cmd = [str(Path(sys.executable).parent / "unimat"), "serve", "--checkpoint",
           str(ROOT / "checkpoints" / "perov5_transformer_cpu.pt"), "--port", str(port), "--num-cpus", "1",
           "--cpus-per-replica", "0.5", "--set", "engine=thread", "--set", "torch_threads=1",
           "--max-sample-steps", "1234", "--body-timeout", "3.5"]
    log_path = tmp_path / "serve.log"
    log_file = log_path.open("wb")  # a file, not a pipe: Ray's logs would fill a pipe nobody reads yet
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)

    def log() -> str:
        return log_path.read_text(errors="replace")

    try:
        deadline, up = time.time() + 240, False
        while time.time() < deadline and proc.poll() is None:
            try:
                up = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
            except requests.RequestException:
                pass
            if up:
                break
            time.sleep(1)
        assert up, log()[-3000:]
        limits = requests.get(f"http://127.0.0.1:{port}/v1/model", timeout=30).json()["limits"]
        assert limits["max_sample_steps"] == 1234 and limits["body_timeout_s"] == 3.5  # the flags
        ray_procs = [p for p in psutil.Process(proc.pid).children(recursive=True)]
        names = {p.name() for p in ray_procs}
        assert {"raylet", "gcs_server"} <= names, names
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        took = time.perf_counter() - t0
        assert rc == 0, log()[-3000:]

        def running(p) -> bool:
            try:
                return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False

        deadline = time.time() + 20
        while time.time() < deadline:
            alive = [p for p in ray_procs if running(p)]
            if not alive:
                break
            time.sleep(0.5)
        assert not alive, [(p.pid, p.name()) for p in alive]
        assert "SIGTERM: shutting down" in log(), log()[-2000:]
        print(f"SIGTERM -> exit in {took:.1f} s; {len(ray_procs)} Ray processes ({sorted(names)}) gone")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log_file.close()
