"""Random access to the members of a huge zip (GNoME's ``by_id.zip``) with a compact index.

``zipfile.ZipFile`` keeps a Python ``ZipInfo`` object per member (~0.5 kB each): 2.2M members would
cost ~1 GB in every worker. ``iter_central_directory`` parses the central directory, streaming, into
NumPy arrays (name hash, local-header offset, compressed size, CRC, method) and ``read_member`` reads a
member with one seek + one read. ``ZipIndex`` keeps those arrays in memory (29 bytes per member: fine
for small archives and tests); the ingest job uses ``zip_disk_index.DiskZipIndex``, the same records in
a file shared by a node's workers. Zip64 archives (more than 65,535 members or 4 GiB) are supported.

Remote archives (``s3://``, ``gs://``) are first copied to node-local scratch space (once per node,
under a file lock): members are read in summary-CSV order, i.e. scattered over the archive, and one
ranged GET per 1 kB CIF would be far slower than one sequential download.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import struct
import tempfile
import zlib
from typing import BinaryIO

import numpy as np

from unimat_dist.storage import filesystem, is_local, split_uri

_EOCD = struct.Struct("<IHHHHIIH")  # end of central directory
_EOCD64_LOCATOR = struct.Struct("<IIQI")
_EOCD64 = struct.Struct("<IQHHIIQQQQ")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_LOCAL = struct.Struct("<IHHHHHIIIHH")


def _key(name: str) -> int:
    # blake2b rather than hash(): stable across processes, so an index may be built once and shared
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "little")


class ZipIndex:
    """Member name -> (offset, compressed size, CRC, method); ``read(fh, name)`` returns the bytes."""

    def __init__(self, keys: np.ndarray, offsets: np.ndarray, csizes: np.ndarray, crcs: np.ndarray, methods: np.ndarray):
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.offsets = offsets[order]
        self.csizes = csizes[order]
        self.crcs = crcs[order]
        self.methods = methods[order]

    def __len__(self) -> int:
        return int(self.keys.size)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.keys, self.offsets, self.csizes, self.crcs, self.methods))

    @classmethod
    def build(cls, fh: BinaryIO) -> "ZipIndex":
        """Parse the central directory of a seekable zip stream."""
        parts = list(iter_central_directory(fh))
        if not parts:
            empty = np.empty(0, dtype=np.uint64)
            return cls(empty, empty, empty, np.empty(0, np.uint32), np.empty(0, np.uint8))
        return cls(*(np.concatenate([p[k] for p in parts]) for k in range(1, 6)))

    def read(self, fh: BinaryIO, name: str, max_bytes: int | None = None) -> bytes | None:
        """The member's uncompressed bytes, or None if the archive has no such member.

        With ``max_bytes``, decompression streams and stops past the cap (``TooLarge``): a 600 KB
        member can inflate to 600 MB, and neither its header's sizes nor its ratio are to be trusted.
        """
        key = np.uint64(_key(name))
        i = int(np.searchsorted(self.keys, key))
        if i >= self.keys.size or self.keys[i] != key:
            return None
        return read_member(fh, name, int(self.offsets[i]), int(self.csizes[i]), int(self.crcs[i]),
                           int(self.methods[i]), max_bytes)


def _central_directory(fh: BinaryIO) -> tuple[int, int, int]:
    """(members, central directory size, its offset) of a seekable zip stream."""
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    tail_len = min(size, 65536 + _EOCD.size + _EOCD64_LOCATOR.size)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    pos = tail.rfind(b"PK\x05\x06")
    if pos < 0:
        raise ValueError("not a zip archive (no end-of-central-directory record)")
    _, _, _, _, count, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, pos)
    loc = pos - _EOCD64_LOCATOR.size
    if loc >= 0 and tail[loc : loc + 4] == b"PK\x06\x07":
        _, _, eocd64_offset, _ = _EOCD64_LOCATOR.unpack_from(tail, loc)
        fh.seek(eocd64_offset)
        rec = _EOCD64.unpack(fh.read(_EOCD64.size))
        count, cd_size, cd_offset = rec[7], rec[8], rec[9]
    # a central record is at least 46 bytes: a count the directory cannot hold is a lie, refused before
    # anything is sized by it
    if cd_offset + cd_size > size or count * _CENTRAL.size > cd_size:
        raise ValueError(f"corrupt zip: {count:,} members in a {cd_size:,}-byte central directory at {cd_offset:,} "
                         f"of a {size:,}-byte file")
    return count, cd_size, cd_offset


def iter_central_directory(fh: BinaryIO, chunk: int = 1 << 16):
    """The central directory in chunks of at most ``chunk`` members, streaming (8 MB reads): tuples
    (members in the archive, name keys, local-header offsets, compressed sizes, CRCs, methods)."""
    count, cd_size, cd_offset = _central_directory(fh)
    fh.seek(cd_offset)
    buf = b""
    p = 0
    left = cd_size
    i = 0
    while i < count:
        m_count = min(chunk, count - i)
        keys = np.empty(m_count, dtype=np.uint64)
        offsets = np.empty(m_count, dtype=np.uint64)
        csizes = np.empty(m_count, dtype=np.uint64)
        crcs = np.empty(m_count, dtype=np.uint32)
        methods = np.empty(m_count, dtype=np.uint8)
        for j in range(m_count):
            if len(buf) - p < _CENTRAL.size + 65535 * 3 and left > 0:  # refill: a record is < 200 kB
                part = fh.read(min(left, 8 << 20))
                left -= len(part)
                buf = buf[p:] + part
                p = 0
            (sig, _, _, _, method, _, _, crc, csize, _usize, n, m, k, _, _, _, offset) = _CENTRAL.unpack_from(buf, p)
            if sig != 0x02014B50:
                raise ValueError(f"corrupt central directory at entry {i + j}")
            start = p + _CENTRAL.size
            name = buf[start : start + n].decode("utf-8", errors="surrogateescape")
            if csize == 0xFFFFFFFF or offset == 0xFFFFFFFF:
                csize, offset = _zip64_extra(buf[start + n : start + n + m], csize, _usize, offset)
            keys[j] = _key(name)
            offsets[j], csizes[j], crcs[j], methods[j] = offset, csize, crc, method
            p = start + n + m + k
        i += m_count
        yield count, keys, offsets, csizes, crcs, methods


def read_member(fh: BinaryIO, name: str, offset: int, csize: int, crc: int, method: int,
                max_bytes: int | None = None) -> bytes:
    """The uncompressed bytes of the member at ``offset`` (its central-directory facts given), checked
    against its local header and CRC; with ``max_bytes``, ``TooLarge`` past the cap (see ``ZipIndex.read``)."""
    fh.seek(offset)
    header = fh.read(_LOCAL.size + len(name.encode("utf-8")))
    sig, *_rest, n, m = _LOCAL.unpack_from(header)
    if sig != 0x04034B50 or header[_LOCAL.size : _LOCAL.size + n].decode("utf-8", errors="surrogateescape") != name:
        raise ValueError(f"zip member {name!r}: local header does not match the central directory")
    fh.seek(offset + _LOCAL.size + n + m)
    cap = max_bytes if max_bytes is not None else 1 << 62
    if method == 0:
        if csize > cap:
            raise TooLarge(name, csize, cap)
        data = fh.read(csize)
    elif method == 8:
        if csize > cap + cap // 1000 + 1024:  # deflate never shrinks data this much below its stored size
            raise TooLarge(name, csize, cap)
        data = _inflate_capped(fh, csize, cap, name)
    else:
        raise ValueError(f"zip member {name!r}: compression method {method} is not supported")
    if zlib.crc32(data) != crc:
        raise ValueError(f"zip member {name!r}: CRC mismatch (corrupt archive)")
    return data


class TooLarge(ValueError):
    """A member whose uncompressed size exceeds the reader's cap (found while streaming)."""

    def __init__(self, name: str, size: int, cap: int) -> None:
        super().__init__(f"zip member {name!r}: more than {cap:,} bytes uncompressed (cap), read {size:,}")
        self.name, self.size, self.cap = name, size, cap


def _inflate_capped(fh: BinaryIO, csize: int, cap: int, name: str) -> bytes:
    d = zlib.decompressobj(-15)
    parts: list[bytes] = []
    total = 0
    left = csize
    while left > 0:
        chunk = fh.read(min(left, 1 << 20))
        if not chunk:
            raise ValueError(f"zip member {name!r}: truncated")
        left -= len(chunk)
        while chunk:
            out = d.decompress(chunk, cap + 1 - total)  # never more than one byte past the cap
            total += len(out)
            parts.append(out)
            if total > cap:
                raise TooLarge(name, total, cap)
            chunk = d.unconsumed_tail
    out = d.flush()
    total += len(out)
    if total > cap:
        raise TooLarge(name, total, cap)
    parts.append(out)
    return b"".join(parts)


def _zip64_extra(extra: bytes, csize: int, usize: int, offset: int) -> tuple[int, int]:
    p = 0
    while p + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, p)
        if tag == 0x0001:
            vals = iter(struct.unpack_from(f"<{size // 8}Q", extra, p + 4))
            if usize == 0xFFFFFFFF:
                next(vals)
            if csize == 0xFFFFFFFF:
                csize = next(vals)
            if offset == 0xFFFFFFFF:
                offset = next(vals)
            break
        p += 4 + size
    return csize, offset


def local_copy(uri: str, storage_options: dict | None, scratch_dir: str | None) -> str:
    """A local path for ``uri``: the path itself for local files, else a node-local cached download."""
    if is_local(uri):
        return split_uri(uri)[1]
    fs, path = filesystem(uri, storage_options)
    base = os.path.join(scratch_dir or tempfile.gettempdir(), "unimat-archives")
    os.makedirs(base, exist_ok=True)
    info = fs.info(path)
    tag = hashlib.sha256(f"{uri}:{info.get('size')}:{info.get('ETag') or info.get('etag') or ''}".encode()).hexdigest()[:16]
    target = os.path.join(base, f"{tag}-{os.path.basename(path)}")
    with open(target + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one download per node; the other workers wait and reuse it
        if not os.path.exists(target):
            tmp = f"{target}.part-{os.getpid()}"
            fs.get_file(path, tmp)
            os.replace(tmp, target)
    return target
