"""Reading files that someone else could have written, without running their code, and checking their bytes.

Checkpoints, DeepSpeed states and caches live in shared storage (a bucket, a cache folder): whoever can
write there must not be able to run code in the processes that read them, and a file altered after it
was written (bit rot, a partial copy, tampering) must be refused before its contents are used.

* ``torch_loads(data, where)`` unpickles ``torch.save`` bytes with ``weights_only=True``: only tensors,
  plain containers and an explicit allow-list of classes can be built (``deepspeed_safe_globals()`` for
  DeepSpeed's optimizer states). Anything else - a ``__reduce__`` payload included - raises
  ``UnsafeFileError`` naming the file, before any of it runs.
* sha256 sidecars: ``<file>.sha256`` holds ``"<hex digest>  <file name>"`` (the format of ``sha256sum``,
  so ``sha256sum -c model.pt.sha256`` checks a downloaded file by hand). ``write_with_sidecar`` writes
  both. Readers (``inference.checkpoint.load_torch``, ``training.deepspeed_checkpoint.verified_copy``) read a file
  once, check those bytes and parse the same bytes: no window in which it can be swapped in between.
* A file without a sidecar (written before checksums existed) still loads, with a logged warning, unless
  the caller knows one must exist (``required=True``: checkpoint directories record that they were
  written with checksums, so deleting a sidecar does not downgrade the check to a warning).

What this does not do: a writer who can replace a file *and* its sidecar (or a shard *and* the
manifest) passes the checksum; checksums detect corruption and partial tampering, not a forger with
full write access. That needs signatures with a key kept outside the storage.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import re
from typing import Any, Iterable, Mapping

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".sha256"
CHECKSUMS_FORMAT = "unimat-dist/checksums"


class UnsafeFileError(ValueError):
    """A file would need to construct arbitrary Python objects (run code) to load; it was not loaded."""


class IntegrityError(ValueError):
    """A file's bytes differ from its recorded sha256, or a required checksum is missing."""


# ------------------------------------------------------------------ safe unpickling
def deepspeed_safe_globals() -> list:
    """The non-tensor classes DeepSpeed (0.1x) pickles into its ZeRO optimizer states. All are plain
    data holders (an IntEnum, a dataclass, a loss-scale record): building them runs no user code."""
    out = []
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        out += [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]
    except ImportError:  # no DeepSpeed installed: nothing of it to allow
        pass
    return out


def torch_loads(data: bytes, where: str, map_location: Any = "cpu", safe_globals: Iterable = ()) -> Any:
    """``torch.load(weights_only=True)`` of in-memory bytes; ``UnsafeFileError`` naming ``where`` when the
    file needs anything beyond tensors, plain containers and ``safe_globals``."""
    import torch

    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is long and advises weights_only=False; keep only what was refused, and keep the
        # message short so that it survives truncation (Ray shows the tail of a worker's error).
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"it references {found.group(1)}" if found else str(exc).strip().splitlines()[-1][:200]
        raise UnsafeFileError(
            f"{where}: refused to load: {what}, and unpickling would call it (only tensors and plain data "
            f"are accepted; nothing from the file ran). File: {where}"
        ) from None


# ------------------------------------------------------------------ sha256
def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(block), b""):
            h.update(chunk)
    return h.hexdigest()


def sidecar_text(digest: str, name: str) -> str:
    return f"{digest}  {name}\n"


def parse_sidecar(text: str, where: str) -> str:
    digest = text.strip().split()[0] if text.strip() else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
        raise IntegrityError(f"{where}: malformed sha256 sidecar {text[:80]!r}")
    return digest.lower()


def check_digest(data: bytes, expected: str | None, where: str, *, required: bool = False) -> None:
    """Raise ``IntegrityError`` if ``data`` does not hash to ``expected``; warn (or raise if ``required``)
    when there is nothing to compare with."""
    if expected is None:
        if required:
            raise IntegrityError(f"{where}: no sha256 recorded for it, but its checkpoint was written with "
                                 "checksums (the checksum was removed?); refusing to load it")
        log.warning("%s: no sha256 sidecar (written before checksums were recorded); loading it UNVERIFIED", where)
        return
    actual = sha256_bytes(data)
    if actual != expected:
        raise IntegrityError(f"{where}: sha256 {actual} does not match the recorded {expected}: the file was "
                             "altered or corrupted after it was written; refusing to load it")


# ------------------------------------------------------------------ files (local paths or fsspec URIs)
def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _local(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def read_file(uri: str, storage_options: dict[str, Any] | None = None) -> bytes | None:
    """The bytes of a file, or None if it does not exist (``storage_options``: see ``unimat_dist.storage``)."""
    if _is_local(uri):
        try:
            with open(_local(uri), "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None
    from unimat_dist.storage import filesystem

    fs, path = filesystem(uri, storage_options)
    try:
        with fs.open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def write_file(uri: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
    """Write a file whole: locally through a temporary sibling + rename, remotely in one PUT."""
    if _is_local(uri):
        path = _local(uri)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
        return
    from unimat_dist.storage import filesystem

    fs, path = filesystem(uri, storage_options)
    with fs.open(path, "wb") as fh:
        fh.write(data)


def write_with_sidecar(uri: str, data: bytes) -> str:
    """Write ``data`` to ``uri`` and its sha256 to ``uri + ".sha256"`` (after the file: a reader never
    finds a sidecar describing bytes that are not there yet). Returns the digest."""
    digest = sha256_bytes(data)
    write_file(uri, data)
    write_file(uri + SIDECAR_SUFFIX, sidecar_text(digest, uri.rstrip("/").rsplit("/", 1)[-1]).encode())
    return digest


# ------------------------------------------------------------------ checksum lists (one JSON for many files)
def write_checksums(path: str, root: str, files: Iterable[str]) -> dict[str, str]:
    """Write ``{"format", "files": {path relative to root: sha256}, "sizes": {path: bytes}}`` to the local file
    ``path``. The sizes let a reader tell a torn copy (a file cut short or missing) without reading it."""
    files = sorted(files)
    rel = [os.path.relpath(f, root).replace(os.sep, "/") for f in files]
    sums = {r: sha256_file(f) for r, f in zip(rel, files)}
    sizes = {r: os.path.getsize(f) for r, f in zip(rel, files)}
    with open(path, "w") as fh:
        json.dump({"format": CHECKSUMS_FORMAT, "files": sums, "sizes": sizes}, fh, indent=1, sort_keys=True)
    return sums


def read_checksums(path: str) -> dict[str, str]:
    with open(path) as fh:
        try:
            data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise IntegrityError(f"{path}: checksum list is not valid JSON ({exc})") from None
    ok = isinstance(data, Mapping) and data.get("format") == CHECKSUMS_FORMAT and isinstance(data.get("files"), Mapping)
    if not ok:
        raise IntegrityError(f"{path}: not a {CHECKSUMS_FORMAT} file")
    return {str(k): parse_sidecar(str(v), f"{path}[{k}]") for k, v in data["files"].items()}


def main(argv: list[str] | None = None) -> int:
    """``python -m unimat_dist.safe_io FILE...``: write (or refresh) the ``.sha256`` sidecar of existing
    files, e.g. checkpoints made before sidecars existed. Only the sidecars are written; the files are not."""
    import sys

    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m unimat_dist.safe_io FILE...", file=sys.stderr)
        return 2
    for p in paths:
        digest = sha256_file(p)
        write_file(p + SIDECAR_SUFFIX, sidecar_text(digest, os.path.basename(p)).encode())
        print(f"{digest}  {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
