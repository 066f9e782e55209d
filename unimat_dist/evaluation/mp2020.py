"""Materials Project 2020 energy corrections applied to CHGNet energies.

CHGNet predicts the raw GGA/GGA+U energies it was trained on; MP's formation energies (and MP-20's
``formation_energy_per_atom`` / ``e_above_hull``) include the MP2020 anion and GGA/GGA+U mixing
corrections. To put CHGNet energies on the same scale, each structure becomes a ComputedStructureEntry
with the run type and Hubbard U values MP would have used (GGA+U for oxides and fluorides of Co, Cr, Fe,
Mn, Mo, Ni, V, W; GGA otherwise) and goes through ``MaterialsProject2020Compatibility``. POTCAR checks are
off: there is no DFT calculation behind the energy.
"""
from __future__ import annotations

import warnings
from functools import lru_cache


@lru_cache(maxsize=1)
def _compat():
    from pymatgen.entries.compatibility import MaterialsProject2020Compatibility

    return MaterialsProject2020Compatibility(check_potcar=False)


def mp_run_parameters(composition) -> dict:
    """The ``run_type`` and ``hubbards`` MP's workflow would have used for this composition."""
    compat = _compat()
    elements = {e.symbol for e in composition.elements}
    u_table = {}
    for anion in ("O", "F"):
        if anion in elements:
            u_table = compat.u_settings.get(anion, {})
            break
    hubbards = {el: u for el, u in u_table.items() if el in elements}
    return {"run_type": "GGA+U" if hubbards else "GGA", "hubbards": hubbards}


def correction_per_atom(structure, energy_per_atom: float) -> float | None:
    """MP2020 correction (eV/atom, usually <= 0) for a structure with this uncorrected energy; None if
    the compatibility scheme rejects the entry."""
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    n = len(structure)
    entry = ComputedStructureEntry(structure, energy_per_atom * n, parameters=mp_run_parameters(structure.composition))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            processed = _compat().process_entry(entry, clean=True)
        except Exception:  # oxidation-state guessing can fail on odd compositions
            return None
    if processed is None:
        return None
    return processed.correction / n
