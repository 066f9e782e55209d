"""What one WebDataset sample holds, and its exact byte encoding.

A sample is two tar members sharing the key ``<key>`` (``u<unit>-<index>``, no dots):

``<key>.unimat.npz`` - a zip (deflate level 1) of four ``.npy`` arrays, read by ``numpy.load``:
    positions    (L, H, W, 3) float32  raw UniMat positions: fractional in [0, 1) or Cartesian Angstrom,
                                        absent atoms at the null location -1
    mask         (L, H, W)    bool     True where a slot holds an atom
    lattice      (D,)         float64  D=6 (a, b, c in Angstrom, alpha, beta, gamma in degrees) for
                                        fractional specs; D=9 (row-vector matrix, Angstrom) for Cartesian
    composition  (H, W)       int16    atoms per element cell: the composition-conditioning array.
                                        element-type mask = composition > 0; exact-count mask =
                                        arange(L)[:, None, None] < composition
``<key>.meta.json`` - UTF-8 JSON object (sorted keys):
    id               source id (CSV material_id, GNoME MaterialId, file path[#frame])
    formula          alphabetical full formula, e.g. "Fe4O6"
    reduced_formula  alphabetical reduced formula, e.g. "Fe2O3" (the split key)
    num_atoms        int
    split            "train" | "val" | "test"
    source           where the record came from (file and row / archive member)
    properties       {name: float or null} numeric targets (formation energy, band gap, ...)
    metadata         {name: value} other source columns (space group, pretty formula, ...)

Everything is byte-deterministic (fixed zip timestamps, sorted JSON keys), so re-running a job
reproduces identical shards and checksums. ``webdataset.WebDataset(url).decode()`` reads these samples
as-is (``.npz`` -> ``NpzFile``, ``.json`` -> dict).
"""
from __future__ import annotations

import io
import json
import struct
import zlib
from functools import lru_cache
from typing import Any

import numpy as np

ARRAYS_MEMBER = "unimat.npz"
META_MEMBER = "meta.json"
ARRAY_NAMES = ("positions", "mask", "lattice", "composition")
# zip records (little-endian), and the earliest DOS date 1980-01-01 00:00: a constant keeps bytes reproducible
_LOCAL = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_END = struct.Struct("<IHHHHIIH")
_DOS_TIME, _DOS_DATE = 0, (0 << 9) | (1 << 5) | 1


def npy_bytes(array: np.ndarray) -> bytes:
    """``numpy.save`` bytes; the header is cached per (dtype, shape) - it is most of save()'s cost."""
    array = np.ascontiguousarray(array)
    return _npy_header(array.dtype.str, array.shape) + array.tobytes()


@lru_cache(maxsize=256)
def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def npz_bytes(arrays: dict[str, np.ndarray], compresslevel: int = 1) -> bytes:
    """A deterministic, deflated ``.npz`` (a zip of ``.npy`` members), written directly.

    ``numpy.savez_compressed`` stamps the current time into the zip and goes through ``zipfile``'s
    per-member machinery, which costs more than encoding a structure; this writes the same format
    (readable by ``numpy.load`` and any zip tool) with a fixed timestamp.
    """
    local = bytearray()
    central = bytearray()
    for name, arr in arrays.items():
        raw = npy_bytes(arr)
        data = zlib.compress(raw, compresslevel, wbits=-15)  # raw deflate, as zip stores it
        crc = zlib.crc32(raw)
        fname = f"{name}.npy".encode()
        offset = len(local)
        local += _LOCAL.pack(0x04034B50, 20, 0, 8, _DOS_TIME, _DOS_DATE, crc, len(data), len(raw), len(fname), 0)
        local += fname + data
        central += _CENTRAL.pack(0x02014B50, 20, 20, 0, 8, _DOS_TIME, _DOS_DATE, crc, len(data), len(raw),
                                 len(fname), 0, 0, 0, 0, 0o644 << 16, offset) + fname
    end = _END.pack(0x06054B50, 0, 0, len(arrays), len(arrays), len(central), len(local), 0)
    return bytes(local + central + end)


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def pack_sample(
    positions: np.ndarray,
    mask: np.ndarray,
    lattice: np.ndarray,
    meta: dict[str, Any],
) -> dict[str, bytes]:
    """Tar members (extension -> bytes) of one encoded crystal."""
    composition = mask.sum(axis=0).astype(np.int16)
    arrays = {
        "positions": positions.astype(np.float32),
        "mask": mask.astype(bool),
        "lattice": np.asarray(lattice, dtype=np.float64),
        "composition": composition,
    }
    return {ARRAYS_MEMBER: npz_bytes(arrays), META_MEMBER: json_bytes(meta)}


def unpack_sample(members: dict[str, bytes]) -> dict[str, Any]:
    """Inverse of ``pack_sample``: {"positions", "mask", "lattice", "composition", "meta"}."""
    try:
        raw = members[ARRAYS_MEMBER]
        meta_raw = members[META_MEMBER]
    except KeyError as exc:
        raise ValueError(f"sample lacks member {exc.args[0]!r} (has {sorted(members)})") from None
    out: dict[str, Any] = {}
    with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
        for name in ARRAY_NAMES:
            out[name] = npz[name]
    out["meta"] = json.loads(meta_raw)
    return out
