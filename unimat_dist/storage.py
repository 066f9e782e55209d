"""fsspec filesystems from URIs (``file://``, plain paths, ``s3://``, ``gs://``), with emulator endpoints.

Endpoints and credentials come from ``storage_options`` (config) first, then from the standard
environment variables, so one code path serves real S3/GCS and the local emulators used by the tests:

* ``s3://``: ``endpoint_url`` <- ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``; ``key``/``secret`` <-
  ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (botocore's own lookup when absent).
* ``gs://``: ``endpoint_url`` <- ``STORAGE_EMULATOR_HOST`` (then ``token="anon"``); otherwise gcsfs'
  default credential chain. ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT`` defaults to ``false`` here, before
  gcsfs is imported: with it on, every call waits ~60 s on a bucket-type probe the emulator lacks.

Object stores have no atomic rename, so "commit" means: write the complete object under its final
name in one PUT (``put_file``/``pipe_file`` create the object only when the upload completes). On a
local filesystem the same functions write a ``.tmp-*`` sibling and ``os.replace`` it.
"""
from __future__ import annotations

import os

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # must precede any gcsfs import

import time  # noqa: E402
import uuid  # noqa: E402
from typing import Any, Callable, Iterable, TypeVar  # noqa: E402

T = TypeVar("T")

TEMP_PREFIX = ".tmp-"
"""Name prefix of in-progress local files; never listed in a manifest, swept when a job completes."""


def split_uri(uri: str) -> tuple[str, str]:
    """``"s3://b/k"`` -> ``("s3", "b/k")``; a plain path or ``file://`` URI -> ``("file", abspath)``."""
    uri = str(uri)
    if "://" in uri:
        scheme, rest = uri.split("://", 1)
        scheme = scheme.lower()
        if scheme in ("file", "local"):
            return "file", os.path.abspath(rest)
        if scheme == "gcs":
            scheme = "gs"
        if scheme == "s3a":
            scheme = "s3"
        return scheme, rest.rstrip("/")
    return "file", os.path.abspath(os.path.expanduser(uri))


def join_uri(base: str, *parts: str) -> str:
    """Join path components onto a URI or path with ``/`` (never the OS separator for remote URIs)."""
    out = str(base).rstrip("/")
    for p in parts:
        p = str(p).strip("/")
        if p:
            out = f"{out}/{p}"
    return out


def resolve_storage_options(scheme: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Options passed to the fsspec filesystem of ``scheme``: explicit config overrides environment."""
    opts = dict(storage_options or {})
    env = os.environ
    if scheme == "s3":
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        if endpoint and "endpoint_url" not in opts and "endpoint_url" not in opts.get("client_kwargs", {}):
            opts["endpoint_url"] = endpoint
    elif scheme == "gs":
        emulator = env.get("STORAGE_EMULATOR_HOST")
        if emulator and "endpoint_url" not in opts:
            opts["endpoint_url"] = emulator if "://" in emulator else f"http://{emulator}"
        if "endpoint_url" in opts:
            opts.setdefault("token", "anon")  # emulators accept anonymous access only
            opts.setdefault("project", "local-emulator")
    return opts


def filesystem(uri: str, storage_options: dict[str, Any] | None = None):
    """(fsspec filesystem, path inside it) for a URI. Filesystem instances are cached by fsspec."""
    import fsspec

    scheme, path = split_uri(uri)
    fs = fsspec.filesystem(scheme, **resolve_storage_options(scheme, storage_options))
    return fs, path


def pyarrow_filesystem(uri: str, storage_options: dict[str, Any] | None = None):
    """(pyarrow filesystem, path) for APIs that take one (e.g. ``ray.data.read_webdataset``)."""
    from pyarrow.fs import FSSpecHandler, LocalFileSystem, PyFileSystem

    fs, path = filesystem(uri, storage_options)
    if split_uri(uri)[0] == "file":
        return LocalFileSystem(), path
    return PyFileSystem(FSSpecHandler(fs)), path


def is_local(uri: str) -> bool:
    return split_uri(uri)[0] == "file"


def with_retries(fn: Callable[[], T], what: str, attempts: int = 4, base_delay: float = 0.5) -> T:
    """Run ``fn``; retry transient storage errors (OSError, timeouts) with exponential backoff."""
    for i in range(attempts):
        try:
            return fn()
        except (OSError, TimeoutError, ConnectionError) as exc:
            if i == attempts - 1 or isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
                raise
            time.sleep(base_delay * 2**i)
    raise AssertionError("unreachable")


def put_file_atomic(local_path: str, uri: str, storage_options: dict[str, Any] | None = None) -> None:
    """Publish a complete local file at ``uri``: readers see either nothing or the whole file."""
    fs, path = filesystem(uri, storage_options)
    if is_local(uri):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = os.path.join(os.path.dirname(path), f"{TEMP_PREFIX}{uuid.uuid4().hex[:8]}-{os.path.basename(path)}")
        import shutil

        shutil.copyfile(local_path, tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return
    with_retries(lambda: fs.put_file(local_path, path), f"upload {uri}")


def write_bytes_atomic(uri: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
    """Write ``data`` to ``uri`` atomically (single PUT remotely, temp file + rename locally)."""
    fs, path = filesystem(uri, storage_options)
    if is_local(uri):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = os.path.join(os.path.dirname(path), f"{TEMP_PREFIX}{uuid.uuid4().hex[:8]}-{os.path.basename(path)}")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return
    with_retries(lambda: fs.pipe_file(path, data), f"write {uri}")


def read_bytes(uri: str, storage_options: dict[str, Any] | None = None) -> bytes:
    fs, path = filesystem(uri, storage_options)
    return with_retries(lambda: fs.cat_file(path), f"read {uri}")


def exists(uri: str, storage_options: dict[str, Any] | None = None) -> bool:
    fs, path = filesystem(uri, storage_options)
    fs.invalidate_cache(path)
    return fs.exists(path)


def list_files(uri: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Sorted basenames of the files directly under ``uri`` (empty when it does not exist)."""
    fs, path = filesystem(uri, storage_options)
    fs.invalidate_cache()  # listings are cached per instance; a resumed job must see fresh state
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
    return sorted(os.path.basename(e["name"].rstrip("/")) for e in entries if e.get("type") != "directory")


def remove_tree(uri: str, storage_options: dict[str, Any] | None = None) -> None:
    """Delete everything under ``uri`` (per object remotely: the emulators lack prefix moves/deletes)."""
    fs, path = filesystem(uri, storage_options)
    fs.invalidate_cache()
    if not fs.exists(path):
        return
    if is_local(uri):
        import shutil

        shutil.rmtree(path)
        return
    for p in sorted(fs.find(path), reverse=True):
        fs.rm_file(p)
    fs.invalidate_cache()


def open_input(uri: str, mode: str = "rb", storage_options: dict[str, Any] | None = None, compression: str | None = None):
    """Open a file for reading through fsspec (``compression="infer"`` handles ``.gz``/``.bz2``/...)."""
    import fsspec

    scheme, _ = split_uri(uri)
    target = uri if "://" in str(uri) else split_uri(uri)[1]
    return fsspec.open(target, mode, compression=compression, **resolve_storage_options(scheme, storage_options)).open()


def sweep_temp_files(uris: Iterable[str]) -> int:
    """Remove leftover ``.tmp-*`` files of crashed local writes from the given local directories."""
    removed = 0
    for uri in uris:
        if not is_local(uri):
            continue
        d = split_uri(uri)[1]
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            if name.startswith(TEMP_PREFIX):
                os.remove(os.path.join(d, name))
                removed += 1
    return removed
