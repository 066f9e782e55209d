"""A zip member index on local disk, built once per node and read with ``pread``: worker memory does not
grow with the archive.

``ZipIndex`` (zip_index.py) holds 29 bytes per member in every worker, and its build sorts copies of those
arrays: for GNoME's 2.2M-member ``by_id.zip`` that was 64 MB resident plus a ~145 MB transient per worker
(measured: peak worker RSS 216 MB at 200k records, 360 MB at 2.2M). Here the index is a file next to the
node-local copy of the archive (scratch space), written once per node under a file lock and shared by the
node's workers through the page cache; a worker keeps an open file descriptor and a 64-byte header:

    header (64 B)   magic, version, members n, buckets B (a power of two, ~32 members per bucket)
    bucket table    B + 1 little-endian uint64: first record of each bucket
    records         n x 32 B (key, local-header offset, compressed size, CRC, method), grouped by bucket

A member's bucket is the top bits of its 64-bit name hash (blake2b, as ``ZipIndex``): a lookup is two
``pread`` calls (16 bytes of the table, ~1 kB of one bucket) and a comparison over ~32 keys, ~10 us.
The build streams the central directory twice (count per bucket, then ``pwrite`` each record at its
bucket's next slot), holding one 64k-member chunk at a time: memory is flat in the archive size too.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import struct
import tempfile
from typing import BinaryIO

import numpy as np

from .zip_index import _key, iter_central_directory, read_member

MAGIC = b"UNIMATZI"
VERSION = 1
HEADER = struct.Struct("<8sIIQQ32x")  # magic, version, reserved, members, buckets (64 bytes)
RECORD = np.dtype([("key", "<u8"), ("offset", "<u8"), ("csize", "<u8"), ("crc", "<u4"), ("method", "u1"),
                   ("_pad", "V3")])
PER_BUCKET = 32


def _bucket_bits(n: int) -> int:
    bits = 1
    while (1 << bits) * PER_BUCKET < n:
        bits += 1
    return min(bits, 40)


class DiskZipIndex:
    """Member name -> bytes of a zip, through an index file (see the module doc)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        magic, version, _, self.n, self.buckets = HEADER.unpack(os.pread(self.fd, HEADER.size, 0))
        if magic != MAGIC or version != VERSION:
            os.close(self.fd)
            raise ValueError(f"{path}: not a unimat zip index (version {VERSION})")
        self.shift = 64 - int(self.buckets).bit_length() + 1
        self.records_at = HEADER.size + 8 * (self.buckets + 1)

    def __len__(self) -> int:
        return int(self.n)

    def close(self) -> None:
        os.close(self.fd)

    def _entry(self, key: int):
        b = key >> self.shift
        start, stop = struct.unpack("<QQ", os.pread(self.fd, 16, HEADER.size + 8 * b))
        if stop <= start:
            return None
        recs = np.frombuffer(os.pread(self.fd, int(stop - start) * RECORD.itemsize,
                                      self.records_at + int(start) * RECORD.itemsize), dtype=RECORD)
        hit = np.flatnonzero(recs["key"] == np.uint64(key))
        return recs[int(hit[0])] if hit.size else None

    def read(self, fh: BinaryIO, name: str, max_bytes: int | None = None) -> bytes | None:
        """The member's uncompressed bytes (``fh``: the archive), or None if there is no such member."""
        e = self._entry(_key(name))
        if e is None:
            return None
        return read_member(fh, name, int(e["offset"]), int(e["csize"]), int(e["crc"]), int(e["method"]), max_bytes)

    # ---------------------------------------------------------------------------------------- build
    @staticmethod
    def write(fh: BinaryIO, path: str) -> None:
        """Write the index of the zip ``fh`` to ``path`` (atomically: a temporary file, then a rename)."""
        counts = None
        n = 0
        bits = None
        for total, keys, *_ in iter_central_directory(fh):
            if bits is None:
                bits = _bucket_bits(total)
                counts = np.zeros(1 << bits, dtype=np.int64)
            counts += np.bincount((keys >> np.uint64(64 - bits)).astype(np.int64), minlength=1 << bits)
            n += keys.size
        if bits is None:  # an empty archive
            bits = 1
            counts = np.zeros(2, dtype=np.int64)
        starts = np.zeros((1 << bits) + 1, dtype="<u8")
        np.cumsum(counts, out=starts[1:].view(np.int64))
        tmp = f"{path}.part-{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.pwrite(fd, HEADER.pack(MAGIC, VERSION, 0, n, 1 << bits), 0)
            os.pwrite(fd, starts.tobytes(), HEADER.size)
            base = HEADER.size + 8 * starts.size
            fill = starts[:-1].astype(np.int64)
            for _, keys, offsets, csizes, crcs, methods in iter_central_directory(fh):
                b = (keys >> np.uint64(64 - bits)).astype(np.int64)
                order = np.argsort(b, kind="stable")
                bs = b[order]
                first = np.searchsorted(bs, bs, side="left")  # index of each bucket's first entry in the chunk
                pos = fill[bs] + (np.arange(bs.size) - first)
                fill += np.bincount(b, minlength=fill.size)
                recs = np.zeros(bs.size, dtype=RECORD)
                recs["key"], recs["offset"], recs["csize"] = keys[order], offsets[order], csizes[order]
                recs["crc"], recs["method"] = crcs[order], methods[order]
                raw = recs.tobytes()
                size = RECORD.itemsize
                # runs of consecutive slots (one bucket's entries of this chunk) in one write each
                breaks = np.flatnonzero(np.diff(pos) != 1) + 1
                for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, pos.size]):
                    os.pwrite(fd, raw[lo * size : hi * size], base + int(pos[lo]) * size)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)


def index_path(archive_path: str, scratch_dir: str | None) -> str:
    """Where the node keeps the index of ``archive_path`` (keyed by its path, size and mtime)."""
    st = os.stat(archive_path)
    tag = hashlib.sha256(f"{os.path.realpath(archive_path)}:{st.st_size}:{st.st_mtime_ns}:{VERSION}".encode())
    base = os.path.join(scratch_dir or tempfile.gettempdir(), "unimat-archives")
    os.makedirs(base, exist_ok=True)
    return os.path.join(base, f"{tag.hexdigest()[:16]}-{os.path.basename(archive_path)}.uzi")


def node_index(archive_path: str, fh: BinaryIO, scratch_dir: str | None) -> DiskZipIndex:
    """The node's index of a local archive: built by the first worker that needs it, reused by the rest."""
    path = index_path(archive_path, scratch_dir)
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(path):
            DiskZipIndex.write(fh, path)
    return DiskZipIndex(path)
