"""A fast reader for P1 CIFs (the layout pymatgen's ``CifWriter`` produces: CDVAE CSVs, GNoME archives).

pymatgen's ``CifParser`` spends ~4 ms per small structure (generic CIF grammar, symmetry expansion,
site matching, sorting); this reader does the same job for the common case in ~0.05 ms. It handles one
data block, a cell given by ``_cell_length_*``/``_cell_angle_*``, identity-only symmetry, and an
``_atom_site_`` loop with type symbols and fractional coordinates. It returns exactly what
``pymatgen`` + ``structure_arrays`` would (same atoms in the same per-element order, coordinates
as written; see tests), except that lattice parameters are the CIF's numbers rather than pymatgen's
re-derivation from its matrix (which differs in the last bits).

Anything else (symmetry operations, uncertainties like ``0.123(4)``, text fields, Cartesian
coordinates, several blocks, no type symbols) raises ``NotFastPath`` and the caller falls back to
pymatgen. Problems that make the record unusable whatever the parser raise ``Rejected``: partial
occupancy (``disordered``), a type symbol that is no element (``unknown_element``), two sites within
pymatgen's site tolerance (``overlapping_atoms``; pymatgen would silently merge them).
"""
from __future__ import annotations

import re
from typing import Callable

import numpy as np

from unimat_dist.representation.periodic_table import Z_OF

from .quarantine import Rejected

SITE_TOLERANCE = 1e-4  # pymatgen CifParser's default: sites closer (per fractional component) merge
FRAC_TOLERANCE = 1e-4  # pymatgen CifParser's default for snapping coordinates to 1/3 and 2/3

_TOKEN = re.compile(r"""'(?:[^']|'(?=\S))*'(?=\s|$)|"(?:[^"]|"(?=\S))*"(?=\s|$)|\S+""")
_SYMBOL = re.compile(r"([A-Z][a-z]?)(?:\d*(?:\.\d+)?[+-]?)?")
_CELL_TAGS = (
    "_cell_length_a",
    "_cell_length_b",
    "_cell_length_c",
    "_cell_angle_alpha",
    "_cell_angle_beta",
    "_cell_angle_gamma",
)
_SYMOP_TAGS = ("_symmetry_equiv_pos_as_xyz", "_space_group_symop_operation_xyz")
_SG_TAGS = ("_symmetry_space_group_name_h-m", "_space_group_name_h-m_alt")


class NotFastPath(Exception):
    """The CIF uses a feature this reader leaves to pymatgen."""


def _unquote(token: str) -> str:
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
        return token[1:-1]
    return token


def _scan(text: str) -> tuple[dict[str, str], list[tuple[list[str], list[str]]]]:
    """Tags and loops of a single-block CIF: ({tag: value}, [(loop tags, flat loop values)])."""
    tags: dict[str, str] = {}
    loops: list[tuple[list[str], list[str]]] = []
    lines = text.splitlines()
    n = len(lines)
    i = 0
    blocks = 0
    while i < n:
        line = lines[i].strip()
        i += 1
        if not line or line[0] == "#":
            continue
        head = line[0]
        if head == ";":
            raise NotFastPath("text field")
        low = line[:5].lower()
        if low == "data_":
            blocks += 1
            if blocks > 1:
                raise NotFastPath("several data blocks")
            continue
        if low == "loop_":
            names: list[str] = []
            while i < n:
                s = lines[i].strip()
                if s.startswith("_"):
                    parts = s.split()
                    if len(parts) > 1:
                        raise NotFastPath("value on a loop header line")
                    names.append(parts[0].lower())
                    i += 1
                elif not s or s[0] == "#":
                    i += 1
                else:
                    break
            values: list[str] = []
            while i < n:
                s = lines[i].strip()
                if not s or s[0] == "#":
                    i += 1
                    continue
                if s[0] == "_" or s[:5].lower() in ("loop_", "data_"):
                    break
                if s[0] == ";":
                    raise NotFastPath("text field in a loop")
                values.extend(_TOKEN.findall(s) if ("'" in s or '"' in s) else s.split())
                i += 1
            if not names:
                raise NotFastPath("loop without tags")
            if len(values) % len(names):
                raise Rejected("parse_error", f"loop of {names[0]} has {len(values)} values for {len(names)} columns")
            loops.append((names, values))
            continue
        if head == "_":
            parts = line.split(None, 1)
            if len(parts) == 2:
                value = parts[1].strip()
            else:
                while i < n and (not lines[i].strip() or lines[i].strip()[0] == "#"):
                    i += 1
                if i >= n or lines[i].strip()[:1] in (";", "_"):
                    raise NotFastPath(f"value of {parts[0]} is not on its line")
                value = lines[i].strip()
                i += 1
            tokens = _TOKEN.findall(value)
            tags[parts[0].lower()] = _unquote(tokens[0]) if len(tokens) == 1 else value
            continue
        raise NotFastPath(f"unexpected line {line[:40]!r}")
    if blocks != 1:
        raise NotFastPath("no data block")
    return tags, loops


def _column(names: list[str], values: list[str], tag: str) -> list[str] | None:
    if tag not in names:
        return None
    k = len(names)
    return values[names.index(tag) :: k]


def _is_p1(tags: dict[str, str], loops) -> bool:
    for names, values in loops:
        for tag in _SYMOP_TAGS:
            ops = _column(names, values, tag)
            if ops is not None:
                return all(_unquote(op).replace(" ", "").lower() == "x,y,z" for op in ops)
    for tag in _SG_TAGS:
        if tag in tags:
            return tags[tag].replace(" ", "").lower() == "p1"
    return False


def _listed_z(symbols: list[str]) -> np.ndarray:
    """Atomic numbers of the listed sites whose type symbol is a plain element (others skipped)."""
    out = []
    for sym in symbols:
        m = _SYMBOL.fullmatch(_unquote(sym))
        zk = Z_OF.get(m.group(1)) if m is not None else None
        if zk is not None:
            out.append(zk)
    return np.asarray(out, dtype=np.int64)


def _site_loop(loops):
    return next(((nm, v) for nm, v in loops if "_atom_site_fract_x" in nm), None)


def check_listed_sites(text: str, check: Callable[[np.ndarray], None]) -> None:
    """Run ``check`` on the listed sites of any CIF this module can scan (used before pymatgen parses
    it); a CIF it cannot scan is left to pymatgen unchecked."""
    try:
        _, loops = _scan(text)
    except (NotFastPath, Rejected):
        return
    site_loop = _site_loop(loops)
    listed = _column(*site_loop, "_atom_site_type_symbol") if site_loop is not None else None
    if listed is not None:
        check(_listed_z(listed))


def parse_p1_cif(text: str, check: Callable[[np.ndarray], None] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Z (N,) int64, fractional coordinates (N, 3) as written, lattice parameters (6,)) of a P1 CIF.

    ``check(z)`` (e.g. ``validate.check_counts``) runs on the listed sites as soon as they are known,
    before any array over sites is built and before the pymatgen fallback is chosen: every listed site
    is at least one atom after symmetry expansion, so a CIF listing more atoms than allowed is rejected
    here whatever its symmetry, without ever reaching the O(N^2) work of either parser.
    """
    tags, loops = _scan(text)
    site_loop = _site_loop(loops)
    if check is not None and site_loop is not None:
        listed = _column(*site_loop, "_atom_site_type_symbol")
        if listed is not None:
            check(_listed_z(listed))
    try:
        params = np.array([float(tags[t]) for t in _CELL_TAGS], dtype=np.float64)
    except KeyError as exc:
        raise NotFastPath(f"no {exc.args[0]}") from None
    except ValueError:
        raise NotFastPath("cell parameters with uncertainties or placeholders") from None
    if not _is_p1(tags, loops):
        raise NotFastPath("symmetry operations other than the identity")
    if site_loop is None:
        raise NotFastPath("no fractional _atom_site loop")
    names, values = site_loop
    symbols = _column(names, values, "_atom_site_type_symbol")
    if symbols is None:
        raise NotFastPath("no _atom_site_type_symbol")
    cols = [_column(names, values, f"_atom_site_fract_{c}") for c in "xyz"]
    if any(c is None for c in cols):
        raise NotFastPath("incomplete fractional coordinates")
    try:
        frac = np.array(cols, dtype=np.float64).T.reshape(-1, 3)
    except ValueError:
        raise NotFastPath("coordinates with uncertainties or placeholders") from None
    # pymatgen rounds coordinates within 1e-4 (relative) of 1/3 or 2/3 to the ideal value
    # (CifParser._sanitize_data); doing the same keeps both paths identical.
    for ideal in (1 / 3, 2 / 3):
        frac = np.where(np.abs(frac / ideal - 1.0) <= FRAC_TOLERANCE, float(str(ideal)), frac)
    z = np.empty(len(symbols), dtype=np.int64)
    for k, sym in enumerate(symbols):
        m = _SYMBOL.fullmatch(_unquote(sym))
        if m is None:
            raise NotFastPath(f"type symbol {sym!r} (Pauling-file mixtures, labels, ...)")
        zk = Z_OF.get(m.group(1))
        if zk is None:
            raise Rejected("unknown_element", f"site {k} has type symbol {sym!r}, which is not an element")
        z[k] = zk
    occ = _column(names, values, "_atom_site_occupancy")
    if occ is not None:
        for k, o in enumerate(occ):
            if o in (".", "?"):
                continue
            try:
                ok = float(o) == 1.0
            except ValueError:
                raise NotFastPath("occupancy with uncertainty") from None
            if not ok:
                raise Rejected("disordered", f"site {k} ({symbols[k]}) has occupancy {o}; only ordered crystals are represented")
    n = z.size
    step = max(1, (1 << 20) // max(n, 1))  # row blocks of <= 1M pairs: memory stays ~25 MB for any N
    for lo in range(0, n if n > 1 else 0, step):
        d = frac[lo : lo + step, None, :] - frac[None, :, :]
        d = np.abs(d - np.round(d))
        close = (d < SITE_TOLERANCE).all(-1)
        rows = np.arange(close.shape[0])
        close[rows, rows + lo] = False  # a site and itself
        if close.any():  # row-major first pair, as an unblocked search would report it
            i, j = (int(v) for v in np.argwhere(close)[0])
            raise Rejected("overlapping_atoms", f"sites {i + lo} and {j} are at the same position (within {SITE_TOLERANCE})")
    return z, frac, params
