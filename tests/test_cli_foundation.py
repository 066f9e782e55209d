"""`unimat stats` and `unimat data download/verify`, run as the user runs them.

The download tests serve files from a local HTTP server on 127.0.0.1 (the public source is not
reachable here), and check the offline failure against a closed local port.
"""
import gzip
import http.server
import json
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from unimat_dist.cli import main
from unimat_dist.datasets.download import DownloadError, download, verify
from unimat_dist.datasets.registry import bundled_path


def test_stats_command_writes_table_and_plots(tmp_path, capsys):
    rc = main(["stats", "--dataset", "carbon_24", "perov_5", "--limit", "150", "--workers", "1", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| carbon_24 |" in out and "| 1 x 1 |" in out
    stats = json.loads((tmp_path / "stats.json").read_text())
    carbon = next(s for s in stats if s["name"] == "carbon_24")
    assert carbon["elements"] == ["C"] and carbon["num_structures"] == 300 and carbon["grid"] == [1, 1]
    perov = next(s for s in stats if s["name"] == "perov_5")
    assert perov["max_atoms_per_element"] == 3
    for png in ("carbon_24_elements.png", "perov_5_elements.png", "atoms_per_cell.png"):
        assert (tmp_path / png).stat().st_size > 10_000


def test_console_script_runs():
    exe = Path(sys.executable).parent / "unimat"
    r = subprocess.run([str(exe), "data", "list"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "perov_5" in r.stdout and "bundled official split" in r.stdout


@pytest.fixture()
def mirror(tmp_path):
    """A local HTTP server serving the bundled (official, md5-known) Perov-5 val split and a corrupted copy."""
    root = tmp_path / "srv"
    (root / "good").mkdir(parents=True)
    (root / "bad").mkdir()
    with gzip.open(bundled_path("perov_5", "val"), "rb") as src:
        data = src.read()
    (root / "good" / "val.csv").write_bytes(data)
    (root / "bad" / "val.csv").write_bytes(data.replace(b"CuCdN3", b"CuCdN4", 1))
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **k)  # noqa: E731
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_download_verifies_md5_and_rows(mirror, tmp_path):
    dest = tmp_path / "cache"
    ledger = download("perov_5", splits=["val"], dest_root=dest, base_url=f"{mirror}/good", progress=False)
    assert ledger["val"]["rows"] == 3787 and ledger["val"]["md5_verified"]
    assert (dest / "perov_5" / "val.csv").exists()
    assert verify("perov_5", dest) == {"val": True}
    with pytest.raises(DownloadError, match="does not match the published"):
        download("perov_5", splits=["val"], dest_root=dest, base_url=f"{mirror}/bad", force=True, progress=False)
    # The rejected file never replaced the good one, and no partial file is left behind.
    assert verify("perov_5", dest) == {"val": True}
    assert sorted(p.name for p in (dest / "perov_5").iterdir()) == ["checksums.json", "val.csv"]
    assert not list((dest / "perov_5").glob("*.part"))


def test_download_row_count_check(mirror, tmp_path):
    # mp_20 has no published md5 here; a file with the wrong number of rows is refused.
    with pytest.raises(DownloadError, match="9047 .*rejected|rows, the official val split has 9047"):
        download("mp_20", splits=["val"], dest_root=tmp_path, base_url=f"{mirror}/good", progress=False)


def test_download_offline_fails_clearly(tmp_path, capsys):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    rc = main(["data", "download", "carbon_24", "--splits", "train", "--dest", str(tmp_path),
               "--base-url", f"http://127.0.0.1:{port}", "--timeout", "5"])
    assert rc == 1
    out = capsys.readouterr().out
    assert "cannot download" in out and "offline" in out and "carbon_24/train.csv" in out
    assert not list((tmp_path / "carbon_24").glob("*.csv"))
    shutil.rmtree(tmp_path / "carbon_24")
