"""A small HTTP client of the generation service (standard library only).

    from unimat_dist.generation.client import GenerationClient
    c = GenerationClient("http://127.0.0.1:8000")
    c.model()["spec"]                                   # GET /v1/model
    r = c.generate(num_samples=4, composition="SrTiO3", steps=50, seed=0)   # POST /v1/generate
    [s["cif"] for s in r["structures"]]

Errors the service reports (4xx/5xx) raise ``ServiceError`` (a ``ValueError``) with its status, type
and message; an unreachable service raises ``ServiceError`` with status 0. The client trusts the server
with nothing but data: a response larger than ``max_response_bytes`` or not a JSON object is a
``ServiceError`` too (type ``bad_response``), and ``unimat generate`` turns no server-sent name into a path
unchecked (``unimat_dist.cli.generate.write_response``).
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class ServiceError(ValueError):
    def __init__(self, status: int, type_: str, message: str, field: str | None = None) -> None:
        where = f" ({field})" if field else ""
        super().__init__(f"HTTP {status} {type_}{where}: {message}" if status else message)
        self.status, self.type, self.message, self.field = status, type_, message, field


MAX_RESPONSE_BYTES = 256 * 2**20  # 64 crystals of CIF text are ~0.5 MB; a bound keeps a server from filling memory
MAX_ERROR_BYTES = 64 * 2**10  # an error body is one short JSON object


class GenerationClient:
    def __init__(self, url: str = "http://127.0.0.1:8000", timeout: float = 300.0,
                 max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes

    def _call(self, method: str, path: str, body: dict[str, Any] | bytes | None = None) -> dict[str, Any]:
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw, status = resp.read(self.max_response_bytes + 1), resp.status
        except urllib.error.HTTPError as exc:
            raw = exc.read(MAX_ERROR_BYTES)
            try:
                err = json.loads(raw).get("error") or {}
            except (ValueError, AttributeError):
                err = {}
            err = err if isinstance(err, dict) else {}
            raise ServiceError(exc.code, err.get("type", "http_error"),
                               err.get("message", raw.decode(errors="replace")[:500]), err.get("field")) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            message = f"cannot reach the generation service at {self.url}: {reason}"
            raise ServiceError(0, "unreachable", message) from None
        if len(raw) > self.max_response_bytes:
            raise ServiceError(status, "bad_response", f"the response exceeds max_response_bytes="
                                                       f"{self.max_response_bytes} bytes")
        try:
            out = json.loads(raw)
        except ValueError:
            out = None
        if not isinstance(out, dict):
            raise ServiceError(status, "bad_response", f"the response is not a JSON object: {raw[:200]!r}")
        return out

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/healthz")

    def model(self) -> dict[str, Any]:
        return self._call("GET", "/v1/model")

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/v1/stats")

    def generate(self, **request: Any) -> dict[str, Any]:
        """``POST /v1/generate`` with the given request fields (None values are left out)."""
        return self._call("POST", "/v1/generate", {k: v for k, v in request.items() if v is not None})
