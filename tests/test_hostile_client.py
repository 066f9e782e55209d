"""``unimat generate`` against a hostile server (issue 16): a tiny http.server on 127.0.0.1 answers
/v1/generate with crafted ids ("../../evil", absolute paths, NUL bytes, dot-only names, non-strings) and
crafted structure entries; every file the client writes stays inside ``--out``."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from unimat_dist.cli import main
from unimat_dist.cli.generate import safe_name, write_response

CIF = "data_x\n_cell_length_a 4.0\n"


def _response(rid, fmt="cif"):
    structures = [{"index": "../../idx", "cif": CIF, "structure": {"species": ["O"]}},
                  {"index": -5, "cif": CIF, "structure": None},
                  {"index": 2, "cif": None},  # nothing decoded: no file
                  "not an object"]
    return {"id": rid, "num_samples": 4, "seed": 0, "sampler": "ddim", "steps": 1, "eta": 0.0, "format": fmt,
            "structures": structures,
            "validity": {"count": 4, "decoded": 2, "structure_valid": 0, "composition_valid": 0, "matches_request": 0,
                         "valid": 0},
            "timing": {"total_s": 0.1, "sample_s": 0.1, "batch_requests": 1, "loop_samples": 1},
            "model": {"checkpoint": "x", "step": 1}}


@pytest.fixture
def hostile_server():
    """Answers every POST with the response queued in ``server.next`` (one thread, loopback only)."""
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            nxt = self.server.next
            body = nxt if isinstance(nxt, bytes) else json.dumps(nxt).encode()
            self.send_response(getattr(self.server, "status", 200))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


EVIL_IDS = ["../../evil", "/tmp/unimat-evil-abs", "a\x00b/../../c", "..", ".", "", None, 12345, "C:\\evil",
            "~/evil", "ok-id_1234567890abcdef"]


@pytest.mark.parametrize("fmt", ["cif", "json"])
def test_crafted_ids_never_write_outside_out(hostile_server, tmp_path, fmt):
    sandbox = tmp_path / "sandbox"
    out = sandbox / "a" / "b" / "out"
    url = f"http://127.0.0.1:{hostile_server.server_address[1]}"
    in_tmp = set(Path("/tmp").glob("unimat-*"))  # where the absolute id (cut to 12 characters) would land
    for rid in EVIL_IDS:
        hostile_server.next = _response(rid, fmt)
        assert main(["generate", "--url", url, "--format", fmt, "--out", str(out), "--timeout", "10"]) == 0, rid
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert written and all(p.parent == out for p in written), written
    names = {p.name for p in written}
    stems = {"evil", "tmpunimat-ev", "abc", "response", "12345", "Cevil", "ok-id_123456"}
    if fmt == "cif":  # the crystal number is the client's own count: 0 and 1 decoded, 2 not, 3 not an object
        assert names == {f"{s}_{k:04d}.cif" for s in stems for k in (0, 1)} | {f"{s}.response.json" for s in stems}
    else:
        assert names == {f"{s}.json" for s in stems} | {f"{s}.response.json" for s in stems}
    assert set(Path("/tmp").glob("unimat-*")) == in_tmp
    # the response file keeps what the server said, for the record ("~/evil" came after "../../evil", same stem)
    assert json.loads((out / "evil.response.json").read_text())["id"] == "~/evil"


def test_safe_name_and_the_path_check(tmp_path):
    assert safe_name("../../evil") == "evil" and safe_name("/etc/passwd") == "etcpasswd"
    assert safe_name("a\x00b") == "ab" and safe_name("..") == "response" and safe_name(None) == "response"
    assert safe_name("x" * 40) == "x" * 12 and safe_name("é/ü") == "response"
    # write_response itself, called as a library function with a crafted id
    files = write_response(_response("../../../../x"), str(tmp_path / "o"))
    assert [p.name for p in files] == ["x_0000.cif", "x_0001.cif", "x.response.json"]
    assert all(p.parent == tmp_path / "o" for p in files)


def test_oversized_or_malformed_responses_are_service_errors(hostile_server):
    from unimat_dist.generation.client import GenerationClient, ServiceError

    client = GenerationClient(f"http://127.0.0.1:{hostile_server.server_address[1]}", timeout=10,
                              max_response_bytes=1000)
    too_big = json.dumps({"id": "x" * 2000}).encode()
    for body, message in ((too_big, "the response exceeds max_response_bytes=1000 bytes"),
                          (b"[1, 2]", "the response is not a JSON object: b'[1, 2]'"),
                          (b"not json", "the response is not a JSON object: b'not json'")):
        hostile_server.next = body
        with pytest.raises(ServiceError) as exc:
            client.generate(num_samples=1)
        assert exc.value.status == 200 and exc.value.type == "bad_response" and exc.value.message == message
    hostile_server.status, hostile_server.next = 500, {"error": "not an object"}
    with pytest.raises(ServiceError) as exc:
        client.generate(num_samples=1)
    assert exc.value.status == 500 and exc.value.type == "http_error"
