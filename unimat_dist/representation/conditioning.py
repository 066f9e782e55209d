"""Composition conditioning arrays: a requested composition -> the masks the model is conditioned on.

* element-type mask, shape (H, W): 1 in the cell of every element present;
* exact-count mask, shape (L, H, W): 1 in slots 0..n_e-1 of the cell of element e (atoms are packed into
  the first slots, as ``encode`` writes them and ``shuffle_slots(mode="atoms")`` keeps them).

A composition is a formula string (``"Fe2O3"``), a mapping (``{"Fe": 2, "O": 3}``) or a pymatgen
``Composition``. Problems (unknown element, element outside a reduced system, more atoms of one element
than L, fractional amounts when exact counts are asked for) raise ``ValueError`` naming the element.
"""
from __future__ import annotations

from typing import Mapping, Union

import numpy as np

from . import periodic_table as pt
from .spec import UniMatSpec

CompositionLike = Union[str, Mapping[str, float], "Composition"]  # noqa: F821


def parse_composition(comp: CompositionLike) -> dict[str, float]:
    """Normalise a composition to {symbol: amount}; ``ValueError`` for anything unparseable."""
    if isinstance(comp, str):
        from pymatgen.core import Composition

        text = comp.strip()
        if not text:
            raise ValueError("empty composition")
        try:
            parsed = Composition(text)
        except Exception as exc:  # pymatgen raises ValueError/KeyError/... for bad formulas
            raise ValueError(f"cannot parse composition {comp!r}: {exc}") from None
        items = {str(el): float(n) for el, n in parsed.get_el_amt_dict().items()}
    elif hasattr(comp, "get_el_amt_dict"):
        items = {str(el): float(n) for el, n in comp.get_el_amt_dict().items()}
    elif isinstance(comp, Mapping):
        items = {}
        for el, n in comp.items():
            if not isinstance(el, str):
                raise ValueError(f"composition keys must be element symbols, got {el!r}")
            try:
                items[el] = items.get(el, 0.0) + float(n)
            except (TypeError, ValueError):
                raise ValueError(f"amount of {el} must be a number, got {n!r}") from None
    else:
        raise ValueError(f"composition must be a formula string or a mapping, got {type(comp).__name__}")
    if not items:
        raise ValueError("empty composition")
    for el, n in items.items():
        pt.symbol_to_z(el)  # raises "unknown element symbol"
        if not np.isfinite(n) or n <= 0:
            raise ValueError(f"amount of {el} must be positive, got {n}")
    return items


def element_mask(comp: CompositionLike, spec: UniMatSpec) -> np.ndarray:
    """(H, W) float32 element-type mask of a composition."""
    out = np.zeros((spec.H, spec.W), dtype=np.float32)
    for el in parse_composition(comp):
        h, w = _cell(el, spec)
        out[h, w] = 1.0
    return out


def count_mask(comp: CompositionLike, spec: UniMatSpec) -> np.ndarray:
    """(L, H, W) float32 exact-count mask: slots 0..n-1 of each element's cell are 1."""
    out = np.zeros((spec.L, spec.H, spec.W), dtype=np.float32)
    for el, n in parse_composition(comp).items():
        if abs(n - round(n)) > 1e-8:
            raise ValueError(f"exact counts need whole numbers of atoms; {el} has {n}")
        n = int(round(n))
        if n > spec.L:
            raise ValueError(f"{n} atoms of {el} exceed max_atoms_per_element L={spec.L} of this model")
        h, w = _cell(el, spec)
        out[:n, h, w] = 1.0
    return out


def _cell(el: str, spec: UniMatSpec) -> tuple[int, int]:
    h, w = spec.cell_of_z[pt.symbol_to_z(el)]
    if h < 0:
        system = ",".join(spec.elements) if spec.elements else "the table"
        raise ValueError(f"element {el} is outside this model's chemical system ({system})")
    return int(h), int(w)
