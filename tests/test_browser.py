"""The browser test infrastructure itself (tests/browser.py): headless system Chromium starts, draws 2D and
WebGL canvases (software rendering), and never reaches a host other than 127.0.0.1."""
from __future__ import annotations

import http.server
import threading

from browser import canvas_drawn, chromium_page, screenshot

_PAGE = b"""<!doctype html><html><body><canvas id=c2d width=200 height=100></canvas>
<canvas id=gl width=200 height=100></canvas><img id=cdn src="https://cdn.example.com/x.png"><script>
const c = document.getElementById('c2d').getContext('2d'); c.fillStyle = 'red'; c.fillRect(0, 0, 100, 50);
const gl = document.getElementById('gl').getContext('webgl', {preserveDrawingBuffer: true});
gl.clearColor(0, 0, 1, 1); gl.enable(gl.SCISSOR_TEST); gl.scissor(0, 0, 100, 50); gl.clear(gl.COLOR_BUFFER_BIT);
</script></body></html>"""


def test_headless_chromium_local_only_and_canvases():
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(_PAGE)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    errors: list[str] = []
    try:
        with chromium_page(errors=errors) as page:
            failed = []
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.goto(f"http://127.0.0.1:{server.server_port}/")
            page.wait_for_load_state("load")
            assert canvas_drawn(page, "#c2d") > 0.2  # a quarter of the canvas is red
            assert canvas_drawn(page, "#gl") > 0.2  # WebGL works without a GPU (SwiftShader)
            assert screenshot(page, "browser_infra").stat().st_size > 1000
            assert failed == ["https://cdn.example.com/x.png"]  # the off-host request was aborted
    finally:
        server.shutdown()
    assert seen[:1] == ["/"]


def test_file_pages_load_their_local_files_and_nothing_remote(tmp_path):
    """A page opened from disk (the gallery) loads its own file: scripts and data: images; a CDN URL is aborted."""
    (tmp_path / "s.js").write_text("document.body.dataset.loaded = 'yes';")
    (tmp_path / "p.html").write_text(
        "<!doctype html><html><body><img id=d src='data:image/gif;base64,R0lGODlhAQABAAAAACw='>"
        "<img id=cdn src='https://cdn.example.com/x.png'><script src='s.js'></script></body></html>")
    with chromium_page() as page:
        failed = []
        page.on("requestfailed", lambda r: failed.append(r.url))
        page.goto((tmp_path / "p.html").as_uri())
        page.wait_for_load_state("load")
        assert page.evaluate("document.body.dataset.loaded") == "yes"
        assert failed == ["https://cdn.example.com/x.png"]
