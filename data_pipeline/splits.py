"""Deterministic train/val/test assignment at the composition level.

The split of a structure is a pure function of its *reduced composition*: every polymorph and every
supercell of Fe2O3 lands in the same split, so no composition leaks between train, val and test.

    key   = alphabetical reduced formula from atom counts, e.g. "Fe2O3" (ours, not pymatgen's
            electronegativity order, so a library upgrade cannot move structures between splits)
    u     = first 8 bytes of sha256(f"{salt}:{key}") as an integer / 2**64, uniform in [0, 1)
    split = "train" if u < f_train, "val" if u < f_train + f_val, else "test"

Fractions are of compositions, not structures: a composition with many polymorphs moves them all.
"""
from __future__ import annotations

import hashlib
from functools import reduce
from math import gcd

import numpy as np

from unimat_dist.representation.periodic_table import SYMBOLS

SPLITS = ("train", "val", "test")
DEFAULT_SALT = "unimat-split-v1"


def formulas(z: np.ndarray) -> tuple[str, str]:
    """(full formula, reduced formula), elements in alphabetical order: ``[26, 26, 8, 8, 8]`` ->
    ``("Fe2O3", "Fe2O3")``; ``[6] * 8`` -> ``("C8", "C")``."""
    counts = np.bincount(np.asarray(z, dtype=np.int64), minlength=119)
    pairs = sorted((SYMBOLS[v - 1], int(counts[v])) for v in np.flatnonzero(counts).tolist())
    g = reduce(gcd, (c for _, c in pairs))

    def fmt(div: int) -> str:
        return "".join(f"{s}{c // div if c // div != 1 else ''}" for s, c in pairs)

    return fmt(1), fmt(g)


def split_of(reduced_formula: str, fractions: dict[str, float], salt: str = DEFAULT_SALT) -> str:
    """The split of a composition (see module doc)."""
    h = hashlib.sha256(f"{salt}:{reduced_formula}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2.0**64
    acc = 0.0
    for name in SPLITS:
        acc += fractions.get(name, 0.0)
        if u < acc:
            return name
    return next(name for name in reversed(SPLITS) if fractions.get(name, 0.0) > 0)


def check_fractions(fractions: dict[str, float]) -> dict[str, float]:
    unknown = set(fractions) - set(SPLITS)
    if unknown:
        raise ValueError(f"split.fractions: unknown split(s) {sorted(unknown)}; use {list(SPLITS)}")
    if any(v < 0 for v in fractions.values()):
        raise ValueError(f"split.fractions must be >= 0, got {fractions}")
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-9:
        raise ValueError(f"split.fractions must sum to 1, got {fractions} (sum {total})")
    return {name: float(fractions.get(name, 0.0)) for name in SPLITS}
