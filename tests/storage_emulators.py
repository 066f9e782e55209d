"""Local S3 (moto) and GCS (gcp-storage-emulator) servers on 127.0.0.1 for storage tests.

Import the fixtures into a test module: ``from storage_emulators import s3_emulator, gcs_emulator``.
Each is module-scoped: the server starts on a free port, the fixture yields an ``Emulator`` with the
bucket's URI and the ``storage_options`` to reach it, and the server is stopped afterwards.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import free_port  # noqa: E402

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # before gcsfs is imported

BIN = Path(sys.executable).parent


@dataclass
class Emulator:
    scheme: str
    bucket: str
    endpoint: str
    storage_options: dict

    def uri(self, *parts: str) -> str:
        return "/".join([f"{self.scheme}://{self.bucket}", *parts])


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    import requests

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"emulator exited with code {proc.returncode}")
        try:
            requests.get(url, timeout=1.0)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise TimeoutError(f"emulator at {url} did not start within {timeout} s")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def s3_emulator(tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_http(endpoint + "/", proc)
        opts = {"endpoint_url": endpoint, "key": "test", "secret": "test"}
        import s3fs

        s3fs.S3FileSystem(**opts, skip_instance_cache=True).mkdir("unimat-test")
        yield Emulator("s3", "unimat-test", endpoint, opts)
    finally:
        _stop(proc)
        log.close()


@pytest.fixture(scope="module")
def gcs_emulator(tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("gcs") / "gcs.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "gcp-storage-emulator"), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory",
         "--default-bucket", "unimat-test"],
        stdout=log,
        stderr=log,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_http(endpoint + "/", proc)
        yield Emulator("gs", "unimat-test", endpoint, {"endpoint_url": endpoint, "token": "anon", "project": "test"})
    finally:
        _stop(proc)
        log.close()
