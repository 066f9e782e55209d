"""Streaming reader for CDVAE-style benchmark CSVs (one crystal per row, a multi-line CIF in ``cif``).

Rows are yielded one at a time (the file is never held in memory), with the CIF text left unparsed so
that callers decide where parsing happens (a Ray task, a process pool, ...). ``.csv.gz`` is read
transparently.
"""
from __future__ import annotations

import csv
import gzip
import io
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

csv.field_size_limit(sys.maxsize)  # CIF cells of large structures exceed the default 128 kB


@dataclass
class CifRecord:
    """One row: ``id`` (unique within its file), the CIF text and the row's other columns."""

    id: str
    cif: str
    properties: dict[str, float] = field(default_factory=dict)  # numeric columns (NaN kept as None)
    metadata: dict[str, Any] = field(default_factory=dict)  # non-numeric columns (formula, elements, ...)
    row: int = -1  # 0-based data row number in the file

    def structure(self):
        """Parse the CIF with pymatgen (raises ``ValueError`` naming this record on failure)."""
        from .parse import structure_from_cif

        return structure_from_cif(self.cif, self.id)


def open_text(path: str | Path):
    p = str(path)
    if p.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(p, "rb"), encoding="utf-8", newline="")
    return open(p, encoding="utf-8", newline="")


def _as_number(value: str):
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None, False
    return (None if math.isnan(x) else x), True


def iter_cdvae_csv(path: str | Path, id_column: str = "material_id") -> Iterator[CifRecord]:
    """Yield the rows of a CDVAE CSV. The unnamed first column (original row index) is kept as
    ``metadata['index']``; a missing ``id_column`` falls back to that index."""
    with open_text(path) as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "cif" not in reader.fieldnames:
            raise ValueError(f"{path}: not a CDVAE CSV (no 'cif' column; columns: {reader.fieldnames})")
        for i, row in enumerate(reader):
            index = row.pop("", None)
            cif = row.pop("cif")
            rid = row.pop(id_column, None) or index or str(i)
            props: dict[str, float] = {}
            meta: dict[str, Any] = {} if index is None else {"index": index}
            for k, v in row.items():
                num, ok = _as_number(v)
                if ok and k not in ("spacegroup.number",):
                    props[k] = num
                elif ok:
                    meta[k] = int(num) if num is not None else None
                else:
                    meta[k] = v
            yield CifRecord(id=str(rid), cif=cif, properties=props, metadata=meta, row=i)


def count_rows(path: str | Path) -> int:
    with open_text(path) as fh:
        return sum(1 for _ in csv.DictReader(fh))
