"""``RawRecord``: one structure as a reader found it, before parsing (cheap to create and to ship)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .quarantine import Rejected

RecordKind = Literal["cif", "poscar", "arrays", "rejected"]


@dataclass
class RawRecord:
    """``kind`` says what ``text``/``arrays`` hold:

    * ``cif`` / ``poscar``: ``text`` is the file content;
    * ``arrays``: ``arrays`` = (Z (N,), fractional coordinates (N, 3), lattice parameters (6,)), e.g.
      from an ASE frame;
    * ``rejected``: the reader already knows the record is bad (``rejected`` says why).
    """

    id: str
    source: str
    kind: RecordKind
    text: str | None = None
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    properties: dict[str, float | None] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    split: str | None = None  # a split fixed by the source (CDVAE files), else assigned by composition
    rejected: Rejected | None = None
