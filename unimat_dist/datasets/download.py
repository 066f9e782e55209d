"""``unimat data download NAME``: fetch the full official CSV splits of a benchmark.

Files land in ``$UNIMAT_CACHE/data/NAME/{train,val,test}.csv`` (default ``~/.cache/unimat/data``),
written under a temporary name and renamed only after they are verified:

* the md5 of the file must match the published one where it is known (Perov-5 and Carbon-24 val/test,
  the files bundled here byte-identical to upstream);
* every file must parse as a CDVAE CSV and hold exactly the official number of rows;
* the sha256 of every accepted file is recorded in ``checksums.json`` beside it, so later runs (and
  colleagues) can check they train on the same bytes (``unimat data verify NAME``).

Without internet access the command fails with a message that says so and where to put files fetched
by other means.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from .cdvae_csv import count_rows
from .registry import SPLITS, cache_dir, get_info

log = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    pass


class NetworkError(DownloadError):
    """The source could not be reached at all (no route, DNS failure, timeout)."""


def _hashes(path: Path) -> tuple[str, str]:
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            md5.update(block)
            sha.update(block)
    return md5.hexdigest(), sha.hexdigest()


def _fetch(url: str, dest: Path, timeout: float, progress: bool) -> None:
    req = urllib.request.Request(url, headers={"User-Agent": "unimat-dist"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp, open(dest, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0)
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=total or None, unit="B", unit_scale=True, desc=Path(url).name, leave=False)
            for block in iter(lambda: resp.read(1 << 20), b""):
                out.write(block)
                if bar is not None:
                    bar.update(len(block))
            if bar is not None:
                bar.close()
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NetworkError(f"cannot download {url}: {reason}") from None


def download(
    name: str,
    splits=SPLITS,
    dest_root: Path | None = None,
    base_url: str | None = None,
    timeout: float = 60.0,
    force: bool = False,
    progress: bool = True,
) -> dict[str, dict]:
    """Download and verify the official splits of ``name``; returns the checksum records per split.

    ``base_url`` replaces the public source (``{base_url}/{split}.csv``), e.g. a mirror or a local server.
    """
    info = get_info(name)
    if not info.urls:
        raise DownloadError(f"{name} has no public download source (it is bundled: {info.description})")
    root = Path(dest_root) if dest_root else cache_dir()
    out_dir = root / name
    out_dir.mkdir(parents=True, exist_ok=True)
    ledger_path = out_dir / "checksums.json"
    ledger = json.loads(ledger_path.read_text()) if ledger_path.exists() else {}
    for split in splits:
        final = out_dir / f"{split}.csv"
        if final.exists() and not force:
            log.info("%s/%s already downloaded at %s", name, split, final)
            continue
        url = f"{base_url.rstrip('/')}/{split}.csv" if base_url else info.urls[split]
        fd, tmp_name = tempfile.mkstemp(prefix=f".{split}.", suffix=".part", dir=out_dir)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            log.info("downloading %s/%s from %s", name, split, url)
            try:
                _fetch(url, tmp, timeout, progress)
            except NetworkError as exc:
                raise NetworkError(
                    f"{exc}. Is this machine offline? Fetch {url} elsewhere and place it at {final}, "
                    "or pass --base-url pointing at a reachable mirror"
                ) from None
            md5, sha = _hashes(tmp)
            want_md5 = info.md5.get(split)
            if want_md5 and md5 != want_md5:
                raise DownloadError(f"{url}: md5 {md5} does not match the published {want_md5}; file rejected")
            try:
                rows = count_rows(tmp)
            except Exception as exc:  # csv.Error, UnicodeDecodeError
                raise DownloadError(f"{url}: not a readable CSV ({exc}); file rejected") from None
            want_rows = info.official_sizes.get(split)
            if want_rows is not None and rows != want_rows:
                raise DownloadError(f"{url}: {rows} rows, the official {split} split has {want_rows}; file rejected")
            shutil.move(str(tmp), final)
        finally:
            tmp.unlink(missing_ok=True)
        ledger[split] = {"url": url, "md5": md5, "sha256": sha, "rows": rows, "md5_verified": bool(want_md5),
                         "downloaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        ledger_path.write_text(json.dumps(ledger, indent=2))
        log.info("%s/%s: %d rows, sha256 %s -> %s", name, split, rows, sha, final)
    return ledger


def verify(name: str, dest_root: Path | None = None) -> dict[str, bool]:
    """Re-hash downloaded files against their ``checksums.json`` records."""
    out_dir = (Path(dest_root) if dest_root else cache_dir()) / name
    ledger_path = out_dir / "checksums.json"
    if not ledger_path.exists():
        raise FileNotFoundError(f"{name} has not been downloaded to {out_dir}")
    ledger = json.loads(ledger_path.read_text())
    result = {}
    for split, rec in ledger.items():
        p = out_dir / f"{split}.csv"
        result[split] = p.exists() and _hashes(p)[1] == rec["sha256"]
    return result
