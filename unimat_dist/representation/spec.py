"""`UniMatSpec`: the shape and meaning of a UniMat tensor (L slots x H rows x W groups x 3 coordinates)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable, Literal

import numpy as np

from . import periodic_table as pt

NULL_VALUE = -1.0
"""Coordinate value of an absent atom in the raw tensor (the paper's null location (-1, -1, -1))."""

CoordKind = Literal["fractional", "cartesian"]


@dataclass(frozen=True)
class UniMatSpec:
    """What a UniMat tensor looks like.

    max_atoms_per_element: L, the number of slots per element cell (the most atoms of one element a
        structure may have).
    coords: ``"fractional"`` (positions in [0, 1), lattice as (a, b, c, alpha, beta, gamma) in
        Angstrom/degrees, diffused jointly) or ``"cartesian"`` (positions in Angstrom in the canonical
        frame of the lattice, lattice as the flattened 3x3 row-vector matrix in the same frame, so a
        rotation acts on both).
    elements: ``None`` for the full 9 x 18 table, or the elements of a reduced chemical system. The
        reduced grid keeps the periodic-table order but only the rows (periods) and columns (groups)
        that hold one of the elements: carbon alone gives H = W = 1, {Fe, O} gives 2 x 2 with two
        usable cells. Stored sorted by Z so that equal systems compare equal.
    """

    max_atoms_per_element: int
    coords: CoordKind = "fractional"
    elements: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.max_atoms_per_element, (int, np.integer)) or self.max_atoms_per_element < 1:
            raise ValueError(f"max_atoms_per_element must be a positive integer, got {self.max_atoms_per_element!r}")
        object.__setattr__(self, "max_atoms_per_element", int(self.max_atoms_per_element))
        if self.coords not in ("fractional", "cartesian"):
            raise ValueError(f"coords must be 'fractional' or 'cartesian', got {self.coords!r}")
        if self.elements is not None:
            els = list(self.elements) if not isinstance(self.elements, str) else [self.elements]
            if not els:
                raise ValueError("elements must be None (full table) or a non-empty list of element symbols")
            zs = sorted({pt.symbol_to_z(e) for e in els})
            object.__setattr__(self, "elements", tuple(pt.SYMBOLS[z - 1] for z in zs))

    # ------------------------------------------------------------------ derived layout
    @cached_property
    def _grid(self) -> tuple[np.ndarray, np.ndarray]:
        if self.elements is None:
            return np.arange(pt.N_ROWS), np.arange(pt.N_GROUPS)
        rows = sorted({pt.CELL_OF[e][0] for e in self.elements})
        cols = sorted({pt.CELL_OF[e][1] for e in self.elements})
        return np.asarray(rows), np.asarray(cols)

    @property
    def L(self) -> int:  # noqa: N802 - the paper's name
        return self.max_atoms_per_element

    @property
    def H(self) -> int:  # noqa: N802
        return len(self._grid[0])

    @property
    def W(self) -> int:  # noqa: N802
        return len(self._grid[1])

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """Shape of one positions tensor: (L, H, W, 3)."""
        return (self.L, self.H, self.W, 3)

    @property
    def lattice_dim(self) -> int:
        """6 lattice parameters for fractional coordinates, 9 matrix entries for Cartesian ones."""
        return 6 if self.coords == "fractional" else 9

    @cached_property
    def rows(self) -> np.ndarray:
        """Full-table row index of each reduced-grid row."""
        return self._grid[0]

    @cached_property
    def cols(self) -> np.ndarray:
        """Full-table column index of each reduced-grid column."""
        return self._grid[1]

    @cached_property
    def z_at_cell(self) -> np.ndarray:
        """(H, W) atomic number held by each cell of this grid; 0 where no element of the system sits."""
        z = pt.Z_AT_CELL[np.ix_(self.rows, self.cols)].copy()
        if self.elements is not None:
            allowed = np.isin(z, [pt.Z_OF[e] for e in self.elements])
            z[~allowed] = 0
        return z

    @cached_property
    def allowed_cells(self) -> np.ndarray:
        """(H, W) bool: cells that may hold atoms (an element of the system is there)."""
        return self.z_at_cell > 0

    @cached_property
    def cell_of_z(self) -> np.ndarray:
        """(119, 2) int: (h, w) of each atomic number in this grid, (-1, -1) when outside the system."""
        out = np.full((119, 2), -1, dtype=np.int64)
        hh, ww = np.nonzero(self.z_at_cell)
        out[self.z_at_cell[hh, ww], 0] = hh
        out[self.z_at_cell[hh, ww], 1] = ww
        return out

    def symbols(self) -> list[str]:
        """Elements this spec can represent, in Z order."""
        return [pt.SYMBOLS[z - 1] for z in sorted(self.z_at_cell[self.allowed_cells].tolist())]

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "max_atoms_per_element": self.L,
            "coords": self.coords,
            "elements": list(self.elements) if self.elements is not None else None,
            "H": self.H,
            "W": self.W,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UniMatSpec":
        known = {"max_atoms_per_element", "coords", "elements", "H", "W"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown UniMatSpec keys: {sorted(unknown)}")
        spec = cls(
            max_atoms_per_element=d["max_atoms_per_element"],
            coords=d.get("coords", "fractional"),
            elements=tuple(d["elements"]) if d.get("elements") else None,
        )
        for k in ("H", "W"):
            if k in d and d[k] != getattr(spec, k):
                raise ValueError(f"UniMatSpec dict says {k}={d[k]} but its elements give {k}={getattr(spec, k)}")
        return spec

    def check_compatible(self, other: "UniMatSpec", what: str = "data") -> None:
        """Raise ``ValueError`` describing every difference between two specs (e.g. config vs shards)."""
        diffs = [
            f"{k}: expected {a!r}, {what} has {b!r}"
            for k, a, b in (
                ("max_atoms_per_element", self.L, other.L),
                ("coords", self.coords, other.coords),
                ("elements", self.elements, other.elements),
            )
            if a != b
        ]
        if diffs:
            raise ValueError(f"UniMat spec mismatch with {what}: " + "; ".join(diffs))

    def describe(self) -> str:
        system = "full table" if self.elements is None else "{" + ",".join(self.elements) + "}"
        return f"UniMatSpec(L={self.L}, H={self.H}, W={self.W}, coords={self.coords}, {system})"


def spec_for_elements(elements: Iterable[str], max_atoms_per_element: int, coords: CoordKind = "fractional") -> UniMatSpec:
    """Convenience: the reduced spec for a chemical system."""
    return UniMatSpec(max_atoms_per_element=max_atoms_per_element, coords=coords, elements=tuple(elements))


__all__ = ["NULL_VALUE", "UniMatSpec", "spec_for_elements"]
