"""Structure and composition validity exactly as CDVAE's benchmark code defines them.

Reference: txie-93/cdvae ``scripts/eval_utils.py`` (``smact_validity``, ``structure_validity``) and
``scripts/compute_metrics.py`` (``Crystal.get_composition``), MIT-licensed. The published tables were
computed with smact 2.2.1; smact 4.x changed three things this module has to undo to reproduce them:

* ``smact.neutral_ratios`` returned ``(exists, ratios)`` in 2.2.1 and returns the bare list in 4.x;
* ``Element.oxidation_states`` was the 2014 SMACT set in 2.2.1 and is the ICSD-2024 set in 4.x
  (4.x keeps the old set as ``oxidation_states_smact14``);
* the Pauling test compared electronegativities first, so a missing value (Pm, noble gases) raised a
  ``TypeError`` that CDVAE's ``except TypeError`` turned into "passes"; 4.x returns ``False`` instead.

``oxidation_set="smact14"`` (default) reproduces the 2.2.1 behaviour; ``"icsd24"`` is what CDVAE's code
gives when it is merely patched to run under smact 4.x. ``docs/evaluation.md`` reports the measured
difference between the two.
"""
from __future__ import annotations

import itertools
import math
from functools import lru_cache
from math import gcd
from typing import Sequence

import numpy as np

STRUCT_CUTOFF = 0.5  # Angstrom, minimum interatomic distance (CDVAE)
MIN_VOLUME = 0.1  # Angstrom^3 (CDVAE: "unrealistically_small_lattice")


MAX_OXIDATION_COMBINATIONS = 10**6
"""Above this many oxidation-state assignments a composition counts as invalid (no benchmark crystal has
enough elements to reach it: 10^6 is e.g. eleven elements with four states each)."""


def composition_counts(species_symbols: Sequence[str]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Element symbols sorted by atomic number and their gcd-reduced counts, as CDVAE computes them
    from a crystal's atom types (``Crystal.get_composition``)."""
    from pymatgen.core import Element

    counts: dict[str, int] = {}
    for s in species_symbols:
        counts[s] = counts.get(s, 0) + 1
    elems = sorted(counts, key=lambda s: Element(s).Z)
    c = [counts[e] for e in elems]
    g = 0
    for x in c:
        g = gcd(g, x)
    return tuple(elems), tuple(x // g for x in c)


@lru_cache(maxsize=None)
def _element_data(symbol: str, oxidation_set: str) -> tuple[tuple[int, ...], float | None]:
    import smact

    try:
        el = smact.Element(symbol)
    except KeyError:
        # SMACT has no data for the superheavy elements (Rf and beyond) that a weak model can still emit:
        # no oxidation states, no electronegativity, so such compositions can never balance. (CDVAE's
        # code would raise here; counting them invalid is the only reading that keeps the set's size.)
        return (), None
    ox = el.oxidation_states_smact14 if oxidation_set == "smact14" else el.oxidation_states
    eneg = el.pauling_eneg if el.pauling_eneg not in (None, 0.0) else None
    return tuple(ox or ()), eneg  # 2.2.1 read an empty list for He/Ne/Ar, 4.x reads None


def oxidation_combinations(symbols, oxidation_set: str = "smact14", stop_above: int | None = None) -> int:
    """How many oxidation-state assignments ``smact_validity`` enumerates for these elements (an element
    SMACT does not know counts 1); stops multiplying once the count passes ``stop_above``."""
    n = 1
    for s in symbols:
        n *= max(len(_element_data(s, oxidation_set)[0]), 1)
        if stop_above is not None and n > stop_above:
            break
    return n


@lru_cache(maxsize=1)
def _metals() -> frozenset[str]:
    import smact

    return frozenset(smact.metals)


def _pauling_ok_221(ox_states: Sequence[int], enegs: Sequence[float | None]) -> bool:
    """smact 2.2.1 ``eneg_states_test`` as seen through CDVAE's ``except TypeError: True``.

    2.2.1 compared a cation/anion pair's electronegativities *before* checking for missing values, so a
    missing value in such a pair raised ``TypeError`` (-> CDVAE counts the test as passed); a missing
    value in any other pair returned False.
    """
    for (ox1, e1), (ox2, e2) in itertools.combinations(zip(ox_states, enegs), 2):
        if ox1 > 0 and ox2 < 0:
            if e1 is None or e2 is None:
                return True
            if e1 >= e2:
                return False
        elif ox1 < 0 and ox2 > 0:
            if e1 is None or e2 is None:
                return True
            if e1 <= e2:
                return False
        elif e1 is None or e2 is None:
            return False
    return True


def _pauling_ok_4x(ox_states: Sequence[int], enegs: Sequence[float | None]) -> bool:
    """smact 4.x ``eneg_states_test``: any missing electronegativity fails the test."""
    for (ox1, e1), (ox2, e2) in itertools.combinations(zip(ox_states, enegs), 2):
        if e1 is None or e2 is None:
            return False
        if (ox1 > 0 and ox2 < 0 and e1 >= e2) or (ox1 < 0 and ox2 > 0 and e1 <= e2):
            return False
    return True


def smact_validity(
    symbols: Sequence[str],
    counts: Sequence[int],
    use_pauling_test: bool = True,
    include_alloys: bool = True,
    oxidation_set: str = "smact14",
) -> bool:
    """CDVAE's composition validity of gcd-reduced ``counts`` of ``symbols``.

    Valid when the composition is a single element, or all elements are metals (``include_alloys``), or
    some assignment of one oxidation state per element is charge neutral with these exact counts and
    passes the Pauling electronegativity test (cations less electronegative than anions).
    """
    if oxidation_set not in ("smact14", "icsd24"):
        raise ValueError(f"oxidation_set must be 'smact14' (smact 2.2.1) or 'icsd24' (smact 4.x), got {oxidation_set!r}")
    if len(symbols) != len(counts):
        raise ValueError(f"{len(symbols)} symbols but {len(counts)} counts")
    if len(set(symbols)) == 1:
        return True
    if include_alloys and all(s in _metals() for s in symbols):
        return True
    data = [_element_data(s, oxidation_set) for s in symbols]
    ox_combos = [d[0] for d in data]
    enegs = [d[1] for d in data]
    if math.prod(max(len(o), 1) for o in ox_combos) > MAX_OXIDATION_COMBINATIONS:
        # Only junk output gets here (an undertrained model emitting a dozen or more elements): the
        # exhaustive search of CDVAE would take hours; such compositions are counted invalid.
        return False
    pauling = _pauling_ok_221 if oxidation_set == "smact14" else _pauling_ok_4x
    # CDVAE calls neutral_ratios with stoichs=[(c,) for c in counts]: the only candidate ratio is the
    # composition itself (already gcd-reduced), so "neutral" means sum(ox * count) == 0.
    for ox in itertools.product(*ox_combos):
        if sum(o * c for o, c in zip(ox, counts)) != 0:
            continue
        if not use_pauling_test or pauling(ox, enegs):
            return True
    return False


def structure_validity(structure, cutoff: float = STRUCT_CUTOFF) -> bool:
    """CDVAE's structure validity: the smallest distance between two *different* sites (periodic images
    within one cell shift, pymatgen's ``distance_matrix``) is >= ``cutoff`` and the volume >= 0.1 A^3.

    As in CDVAE, a site's distance to its own periodic image is not considered.
    """
    dist = np.array(structure.distance_matrix, dtype=float)
    dist = dist + np.diag(np.full(dist.shape[0], cutoff + 10.0))
    return bool(dist.min() >= cutoff and structure.volume >= MIN_VOLUME)
