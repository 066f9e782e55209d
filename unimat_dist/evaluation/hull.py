"""Formation energies and energies above a reference convex hull (pymatgen ``PhaseDiagram``).

Conventions (all eV/atom):

* ``E_f = (E - sum_i n_i mu_i) / N``: ``E`` is the CHGNet energy (already on MP's MP2020-corrected
  scale), ``mu_i`` the CHGNet elemental references (``elemental_refs.py``); for reference data, MP's DFT
  formation energy.
* ``E_hull = E_f - E_f^hull(composition)``, where ``E_f^hull`` is the reference hull's formation energy
  at that composition (elements at 0). Unlike ``PhaseDiagram.get_e_above_hull`` it can be **negative**:
  ``E_hull < 0`` means the structure lies below the reference hull ("stable" in the paper's sense),
  ``E_hull < 0.025`` "metastable".

The bundled reference hull (``ReferenceHull.from_mp20``) uses every row of the MP-20 CSVs it is given:
a row with DFT formation energy ``E_f`` and MP's ``e_above_hull`` ``e`` contributes the point
``(composition, E_f - e)``, which lies *on* Materials Project's hull. The hull of these points therefore
reproduces MP's ``e_above_hull`` exactly for every bundled row and lies on or above MP's hull elsewhere
(it knows fewer phases), so E_hull measured against it is an upper bound of E_hull against full MP.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Sequence

log = logging.getLogger(__name__)


class ReferenceHull:
    """A convex hull in formation-energy space from ``(composition, formation energy per atom)`` points."""

    def __init__(self, points: Iterable[tuple[object, float]], note: str = ""):
        from pymatgen.core import Composition

        self.points = [(Composition(c), float(e)) for c, e in points]
        self.note = note
        self._pd_cache: dict[frozenset, object] = {}

    def __len__(self) -> int:
        return len(self.points)

    @classmethod
    def from_mp20(cls, sources: Sequence[str | Path] | None = None) -> "ReferenceHull":
        """Hull of MP's hull energies at the compositions of the given MP-20 CSVs (default: all bundled
        ``mp_20_subset`` splits, or the downloaded official ``mp_20`` splits when present)."""
        from unimat_dist.datasets import iter_cdvae_csv, resolve_split
        from unimat_dist.datasets.parse import structure_from_cif

        if sources is None:
            sources = [resolve_split("mp_20", s).path for s in ("train", "val", "test")]
        points, n_rows = [], 0
        for src in sources:
            for rec in iter_cdvae_csv(src):
                ef = rec.properties.get("formation_energy_per_atom")
                eh = rec.properties.get("e_above_hull")
                if ef is None or eh is None:
                    raise ValueError(f"{src}: row {rec.id} lacks formation_energy_per_atom/e_above_hull")
                formula = rec.metadata.get("pretty_formula")
                comp = formula if formula else structure_from_cif(rec.cif, rec.id).composition
                points.append((comp, ef - eh))
                n_rows += 1
        note = f"MP hull points (E_f - e_above_hull) of {n_rows} MP-20 rows from {', '.join(str(s) for s in sources)}"
        return cls(points, note)

    def _phase_diagram(self, elements: frozenset):
        from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
        from pymatgen.core import Composition

        pd = self._pd_cache.get(elements)
        if pd is None:
            entries = [PDEntry(Composition({el: 1}), 0.0) for el in elements]
            for comp, ef in self.points:
                if {e.symbol for e in comp.elements} <= elements:
                    entries.append(PDEntry(comp, ef * comp.num_atoms))
            pd = PhaseDiagram(entries)
            self._pd_cache[elements] = pd
        return pd

    def hull_energy(self, composition) -> float:
        """Formation energy per atom of the hull at ``composition``."""
        from pymatgen.core import Composition

        comp = Composition(composition)
        pd = self._phase_diagram(frozenset(e.symbol for e in comp.elements))
        return float(pd.get_hull_energy_per_atom(comp))

    def e_hull(self, composition, e_form_per_atom: float) -> float:
        """``E_f - E_f^hull``: negative below the reference hull."""
        return float(e_form_per_atom) - self.hull_energy(composition)


def formation_energy_per_atom(composition, energy_per_atom: float, mu: dict[str, float]) -> float:
    """``(E - sum_i n_i mu_i) / N`` with ``energy_per_atom`` = E / N (eV/atom)."""
    from pymatgen.core import Composition

    comp = Composition(composition)
    missing = [e.symbol for e in comp.elements if e.symbol not in mu]
    if missing:
        raise ValueError(f"no elemental reference energy for {missing}")
    n = comp.num_atoms
    return float(energy_per_atom - sum(amt * mu[el.symbol] for el, amt in comp.items()) / n)
