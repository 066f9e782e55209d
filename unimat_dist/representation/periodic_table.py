"""The UniMat periodic-table layout: every element has one fixed (row, group) cell in a 9 x 18 grid.

Rows 0-6 are periods 1-7. The lanthanides (La-Lu, Z=57-71) occupy row 7 and the actinides (Ac-Lr,
Z=89-103) row 8, both spanning groups 3-17 (column indices 2-16), as in the usual "wide" drawing of
the table folded back into 18 columns. The group-3 cells of periods 6 and 7 (row 5/6, column 2) are
left empty: La and Ac live in the f-block rows, so no element has two cells.

All 118 elements have a cell; indices are 0-based (row, column) = (period - 1, group - 1) for the
main table.
"""
from __future__ import annotations

import numpy as np

N_ROWS = 9
N_GROUPS = 18

_SYMBOLS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr "
    "Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm "
    "Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No "
    "Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og"
).split()
assert len(_SYMBOLS) == 118

SYMBOLS: tuple[str, ...] = tuple(_SYMBOLS)
"""Element symbols indexed by Z - 1."""


def _build_cells() -> dict[int, tuple[int, int]]:
    cells: dict[int, tuple[int, int]] = {1: (0, 0), 2: (0, 17)}
    # Periods 2 and 3: groups 1-2 then 13-18.
    for row, first in ((1, 3), (2, 11)):
        cols = [0, 1] + list(range(12, 18))
        for k, col in enumerate(cols):
            cells[first + k] = (row, col)
    # Periods 4 and 5: all 18 groups.
    for row, first in ((3, 19), (4, 37)):
        for col in range(18):
            cells[first + col] = (row, col)
    # Periods 6 and 7: groups 1-2, then (f-block elsewhere) groups 4-18.
    for row, first, after_f in ((5, 55, 72), (6, 87, 104)):
        cells[first] = (row, 0)
        cells[first + 1] = (row, 1)
        for k, col in enumerate(range(3, 18)):
            cells[after_f + k] = (row, col)
    # f-block rows: La-Lu and Ac-Lr in columns 2..16.
    for row, first in ((7, 57), (8, 89)):
        for k in range(15):
            cells[first + k] = (row, 2 + k)
    return cells


_CELLS = _build_cells()
assert len(_CELLS) == 118 and len(set(_CELLS.values())) == 118

Z_OF: dict[str, int] = {s: i + 1 for i, s in enumerate(SYMBOLS)}
CELL_OF_Z: dict[int, tuple[int, int]] = dict(_CELLS)
CELL_OF: dict[str, tuple[int, int]] = {SYMBOLS[z - 1]: rc for z, rc in _CELLS.items()}

# Dense lookup arrays for vectorised encoding: index by atomic number Z (0 unused).
ROW_OF_Z = np.full(119, -1, dtype=np.int64)
COL_OF_Z = np.full(119, -1, dtype=np.int64)
for _z, (_r, _c) in _CELLS.items():
    ROW_OF_Z[_z] = _r
    COL_OF_Z[_z] = _c

Z_AT_CELL = np.zeros((N_ROWS, N_GROUPS), dtype=np.int64)
"""Atomic number at each (row, column) of the full table; 0 where the cell is empty."""
for _z, (_r, _c) in _CELLS.items():
    Z_AT_CELL[_r, _c] = _z


def symbol_to_z(symbol: str) -> int:
    """Atomic number of an element symbol; ``ValueError`` for anything that is not an element."""
    try:
        return Z_OF[symbol]
    except KeyError:
        raise ValueError(f"unknown element symbol {symbol!r}") from None


def table_ascii() -> str:
    """The layout as text, one row per line (used by docs and ``unimat stats --layout``)."""
    lines = []
    for r in range(N_ROWS):
        cells = [SYMBOLS[Z_AT_CELL[r, c] - 1] if Z_AT_CELL[r, c] else "." for c in range(N_GROUPS)]
        lines.append(" ".join(f"{x:>2}" for x in cells))
    return "\n".join(lines)
