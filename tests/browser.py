"""A real headless browser for the tests: the system Chromium (Debian package ``chromium``) driven by
Playwright, with no browser download (``playwright install`` is never run).

    from browser import chromium_page, screenshot, canvas_drawn

    with chromium_page() as page:               # skips the test when no Chromium is installed
        page.goto(url)
        screenshot(page, "gallery")              # -> out/test-artifacts/gallery.png
        assert canvas_drawn(page, "#viewer canvas") > 0.01  # fraction of non-background pixels

Everything stays on this machine: file:, data: and blob: URLs (a gallery opened from disk) and 127.0.0.1 /
localhost pass, every request to another host is aborted (a page that pulls an asset from a
CDN fails its test instead of silently working online), and the browser gets no proxy. ``make setup``
installs Chromium on a Debian machine as root (``apt-get install chromium``); elsewhere point
``UNIMAT_CHROMIUM`` at a Chromium/Chrome binary. ``UNIMAT_REQUIRE_BROWSER=1`` turns the skip into a failure
(for CI, where a missing browser is a setup error).
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("UNIMAT_TEST_ARTIFACTS", ROOT / "out" / "test-artifacts"))
_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}
# flags for a container: no setuid sandbox (root), no /dev/shm limits, software rendering for WebGL
_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
         "--ignore-gpu-blocklist", "--no-proxy-server", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]


def chromium_path() -> str | None:
    """The Chromium binary: ``UNIMAT_CHROMIUM``, else the first of chromium / chromium-browser / google-chrome
    on PATH (None when there is none)."""
    env = os.environ.get("UNIMAT_CHROMIUM")
    if env:
        return env if Path(env).exists() else shutil.which(env)
    return next((p for p in map(shutil.which, _CANDIDATES) if p), None)


def _require_browser() -> str:
    path = chromium_path()
    try:
        import playwright  # noqa: F401
    except ImportError:
        path, why = None, "playwright is not installed (pip install -e '.[test]')"
    else:
        why = "no Chromium found (make setup installs the Debian package; or set UNIMAT_CHROMIUM)"
    if path is None:
        if os.environ.get("UNIMAT_REQUIRE_BROWSER") == "1":
            pytest.fail(why)
        pytest.skip(why)
    return path


_LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")


def _local_only(route) -> None:
    """Continue requests for file:, data:, blob: and about: URLs and http(s)/ws to 127.0.0.1 / localhost;
    abort everything else (a CDN asset, any other host)."""
    url = route.request.url
    host = urlsplit(url).hostname or ""
    if url.startswith(_LOCAL_SCHEMES) or host in _LOCAL_HOSTS:
        route.continue_()
    else:
        route.abort()


@contextlib.contextmanager
def chromium_page(width: int = 1280, height: int = 900, *, errors: list | None = None) -> Iterator:
    """A Playwright ``Page`` in headless system Chromium; traffic to hosts other than 127.0.0.1/localhost is
    aborted. ``errors``, if given, collects the page's uncaught JavaScript errors and console errors."""
    from playwright.sync_api import sync_playwright

    executable = _require_browser()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=_ARGS,
                                     env={**os.environ, "no_proxy": "*"})
        try:
            context = browser.new_context(viewport={"width": width, "height": height})
            context.route("**/*", _local_only)
            page = context.new_page()
            page.set_default_timeout(30_000)
            if errors is not None:
                page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
                page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
            yield page
        finally:
            browser.close()


@pytest.fixture
def page():
    """A fresh headless Chromium page for one test (see ``chromium_page``)."""
    with chromium_page() as p:
        yield p


def screenshot(page, name: str, *, full_page: bool = True, to: str | Path | None = None) -> Path:
    """Save a PNG of ``page`` as ``ARTIFACTS/<name>.png`` (and also to ``to`` when given); returns the artefact."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
    page.screenshot(path=str(path), full_page=full_page)
    if to is not None:
        Path(to).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, to)
    return path


def canvas_drawn(page, selector: str = "canvas") -> float:
    """Fraction of the first matching canvas's pixels that differ from its corner pixel (its background),
    read from a screenshot of the element (works for 2D and WebGL canvases alike); waits for it to be visible."""
    import io

    import numpy as np
    from PIL import Image

    element = page.locator(selector).first
    element.wait_for(state="visible")
    img = np.asarray(Image.open(io.BytesIO(element.screenshot())).convert("RGB")).astype(int)
    background = img[0, 0]
    differs = np.abs(img - background).sum(axis=-1) > 30
    return float(differs.mean())
