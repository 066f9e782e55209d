"""CIF text -> pymatgen structure, with errors that name the record."""
from __future__ import annotations

import warnings


def structure_from_cif(cif: str, record: str | None = None):
    """Parse one CIF block into a ``pymatgen.core.Structure``.

    Raises ``ValueError("<record>: ...")`` when the text holds no parseable structure. Partial
    occupancies are kept (the encoder rejects them with its own message).
    """
    from pymatgen.io.cif import CifParser

    where = f"{record}: " if record else ""
    if not cif or not cif.strip():
        raise ValueError(f"{where}empty CIF")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parser = CifParser.from_str(cif, occupancy_tolerance=1.0)
            structures = parser.parse_structures(primitive=False, on_error="raise")
    except Exception as exc:  # pymatgen raises many types for malformed CIFs
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{where}unparseable CIF ({msg})") from None
    if not structures:
        raise ValueError(f"{where}CIF holds no structure")
    return structures[0]


def structures_from_csv(path, id_column: str = "material_id", limit: int | None = None):
    """Convenience for small files: [(record, structure)] of a CDVAE CSV (``limit`` rows at most)."""
    from .cdvae_csv import iter_cdvae_csv

    out = []
    for rec in iter_cdvae_csv(path, id_column):
        if limit is not None and len(out) >= limit:
            break
        out.append((rec, structure_from_cif(rec.cif, rec.id)))
    return out
