"""The generation page of the service: ``GET /`` serves a form (composition, samples, sampler, steps, eta,
seed, guidance and property targets) that calls ``POST /v1/generate`` on the same origin and shows the
crystals in the gallery's cards and 3D viewer (``unimat_dist/gallery/static``), with validity flags and
CIF/POSCAR downloads; a 4xx answer's message appears next to the field its ``error.field`` names.

Everything the page loads comes from this app (``GET /static/<name>``, an allow-list of files, no CDN),
so it works on a machine with no internet access and behind the same reverse proxy as the API. The
routes sit on the FastAPI app outside the deployment class (``add_page_routes(api)`` in ``deploy/app.py``):
they touch no model state and are cheap, so they are not counted in ``/v1/stats``.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, Response

PAGE_DIR = Path(__file__).resolve().parent / "static"
GALLERY_DIR = Path(__file__).resolve().parents[1] / "unimat_dist" / "gallery" / "static"
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml",
          ".png": "image/png", ".txt": "text/plain; charset=utf-8"}
# the page's own files first: a gallery file of the same name does not replace them
_SEARCH = (PAGE_DIR, GALLERY_DIR)
# what a browser may cache: the files change only with the package version, which the page's URLs carry
_CACHE = "public, max-age=3600"
_SECURITY = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
             "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                                        "style-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'; "
                                        "frame-ancestors 'none'"}


def static_file(name: str) -> Path | None:
    """The file served as ``/static/<name>``: a plain file name (no folders) with a known suffix, found in
    the page's folder or the gallery's; None otherwise (a 404)."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or Path(name).suffix not in _TYPES:
        return None
    for folder in _SEARCH:
        path = folder / name
        if path.is_file():
            return path
    return None


def page_html(version: str) -> str:
    """index.html with the package version in its asset URLs (a new release is a new URL: no stale cache)."""
    return (PAGE_DIR / "index.html").read_text(encoding="utf-8").replace("{{version}}", version)


def add_page_routes(api: FastAPI, version: str) -> None:
    """``GET /`` (the page) and ``GET /static/<name>`` (its scripts and styles) on ``api``."""

    @api.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html(version), headers={**_SECURITY, "Cache-Control": "no-cache"})

    @api.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        path = static_file(name)
        if path is None:
            return JSONResponse({"error": {"type": "not_found", "message": f"no static file {name!r}"}},
                                status_code=404)
        return Response(path.read_bytes(), media_type=_TYPES[path.suffix],
                        headers={**_SECURITY, "Cache-Control": _CACHE})
