"""Row boundaries of a CSV whose quoted fields span lines (CDVAE's multi-line CIF column), found fast.

Work units read disjoint byte ranges of one CSV in parallel, so the planner needs the byte offset where
every K-th row starts. Python's ``csv`` module cannot report offsets and is slow on GB files; this scan
uses NumPy over 1 MB blocks: a newline ends a row iff an even number of double quotes precedes it
(RFC 4180 escapes a quote as ``""``, which keeps the parity). Blank lines are not rows, as in ``csv``.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import numpy as np

_BLOCK = 1 << 20  # bytes per scan block: ~7 temporary arrays of this size, so a 100 MB row costs ~7 MB
_QUOTE = ord('"')
_NL = ord("\n")
_CR = ord("\r")


@dataclass(frozen=True)
class CsvIndex:
    header: bytes  # the header row including its newline
    unit_offsets: tuple[int, ...]  # byte offset of the first row of every unit, then the end offset
    unit_rows: tuple[int, ...]  # index (0-based data row) of the first row of every unit
    rows: int  # data rows indexed (after ``limit``)

    @property
    def units(self) -> int:
        return len(self.unit_offsets) - 1


def index_csv(stream: BinaryIO, rows_per_unit: int, limit: int | None = None) -> CsvIndex:
    """Scan a binary CSV stream once; ranges of ``rows_per_unit`` data rows (the last may be shorter)."""
    if rows_per_unit < 1:
        raise ValueError(f"rows_per_unit must be >= 1, got {rows_per_unit}")
    starts: list[np.ndarray] = []  # offset where each non-blank row's range begins
    ends: list[np.ndarray] = []  # offset just after each non-blank row's newline
    head = b""  # the first MB, to cut the header row out of
    pos = 0  # offset of the current block
    in_quote = False
    last_end = 0  # offset after the most recent row terminator
    prev_byte = 0
    found = 0
    want = None if limit is None else limit + 1  # data rows + header
    block = b""
    while want is None or found < want:
        block = stream.read(_BLOCK)
        if not block:
            break
        if len(head) < (1 << 20):
            head += block[: (1 << 20) - len(head)]
        arr = np.frombuffer(block, dtype=np.uint8)
        # uint8 running count: wraps at 256, which keeps the parity and uses 1 byte (not 8) per input byte
        parity = (np.cumsum(arr == _QUOTE, dtype=np.uint8) & 1).astype(bool) ^ in_quote
        idx = np.flatnonzero((arr == _NL) & ~parity)
        if idx.size:
            term = idx + pos + 1
            begin = np.concatenate(([last_end], term[:-1]))
            before = np.where(idx > 0, arr[np.maximum(idx - 1, 0)], prev_byte)
            length = term - begin
            blank = (length == 1) | ((length == 2) & (before == _CR))
            starts.append(begin[~blank])
            ends.append(term[~blank])
            found += int((~blank).sum())
            last_end = int(term[-1])
        in_quote = bool(parity[-1])
        prev_byte = int(arr[-1])
        pos += arr.size
    if (want is None or found < want) and pos > last_end:
        tail = block[len(block) - (pos - last_end) :] if pos - last_end <= len(block) else b"x"
        if tail.strip(b"\r\n \t"):  # a last row without a trailing newline
            starts.append(np.array([last_end]))
            ends.append(np.array([pos]))
    row_starts = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
    row_ends = np.concatenate(ends) if ends else np.zeros(0, dtype=np.int64)
    if row_ends.size == 0:
        raise ValueError("empty CSV (no header row)")
    if row_ends[0] > len(head):
        raise ValueError("CSV header row longer than 1 MB")
    header = head[int(row_starts[0]) : int(row_ends[0])]
    row_starts, row_ends = row_starts[1:], row_ends[1:]
    if limit is not None:
        row_starts, row_ends = row_starts[:limit], row_ends[:limit]
    n = int(row_ends.size)
    first_rows = list(range(0, n, rows_per_unit))
    offsets = [int(row_starts[r]) for r in first_rows] + [int(row_ends[-1]) if n else len(header)]
    return CsvIndex(header=header, unit_offsets=tuple(offsets), unit_rows=tuple(first_rows), rows=n)


class RangeReader(io.RawIOBase):
    """A read-only view of ``nbytes`` bytes of a stream from its current position."""

    def __init__(self, raw: BinaryIO, nbytes: int) -> None:
        self.raw = raw
        self.left = nbytes

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.left <= 0:
            return 0
        data = self.raw.read(min(len(b), self.left))
        n = len(data)
        b[:n] = data
        self.left -= n
        return n


def skip_to(stream: BinaryIO, offset: int) -> None:
    """Position a stream at ``offset``: seek when possible, else read and discard (compressed input)."""
    try:
        stream.seek(offset)
        return
    except (OSError, ValueError, io.UnsupportedOperation):
        pass
    left = offset
    while left > 0:
        chunk = stream.read(min(left, _BLOCK))
        if not chunk:
            raise ValueError(f"stream ended before offset {offset}")
        left -= len(chunk)


class OverLong(int):
    """Stands for a row longer than the cap (its length in bytes); the row itself was never held."""


def iter_row_bytes(stream: BinaryIO, nbytes: int, max_row_bytes: int) -> Iterator[bytes | OverLong]:
    """The rows of ``nbytes`` bytes of a CSV stream, by the same rule as ``index_csv`` (a newline outside
    quotes ends a row, blank lines are not rows), each as its raw bytes with the terminator.

    Rows are cut here rather than by ``csv`` so one bad row stays one bad record: a row over
    ``max_row_bytes`` is skipped while streaming (memory stays ~ one block + the cap) and yielded as
    ``OverLong(length)``; decoding and field splitting happen per row in the caller.
    """
    left = nbytes
    pending: list[bytes] = []
    pending_len = 0
    overlong = False
    in_quote = False
    while left > 0:
        block = stream.read(min(left, 1 << 20))
        if not block:
            break
        left -= len(block)
        arr = np.frombuffer(block, dtype=np.uint8)
        parity = (np.cumsum(arr == _QUOTE, dtype=np.uint8) & 1).astype(bool) ^ in_quote
        ends = np.flatnonzero((arr == _NL) & ~parity)
        in_quote = bool(parity[-1])
        start = 0
        for e in ends.tolist():
            size = pending_len + e + 1 - start
            if overlong or size > max_row_bytes:
                yield OverLong(size)
            else:
                row = b"".join(pending) + block[start : e + 1] if pending else block[start : e + 1]
                if row not in (b"\n", b"\r\n"):
                    yield row
            pending, pending_len, overlong = [], 0, False
            start = e + 1
        if start < len(block):
            pending_len += len(block) - start
            if overlong or pending_len > max_row_bytes:
                pending, overlong = [], True  # keep counting, stop holding
            else:
                pending.append(block[start:])
    if pending_len:
        if overlong:
            yield OverLong(pending_len)
        else:
            tail = b"".join(pending)
            if tail.strip(b"\r\n \t"):  # a last row without a trailing newline
                yield tail
