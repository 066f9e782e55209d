"""The property behind the property EMD.

CDVAE predicted each data set's property with a learned GNN bundled in its repository (MP-20: formation
energy per atom; Perov-5: heat of formation; Carbon-24: energy per atom). Those models are not
available here, so the potential stands in (a documented departure): CHGNet's formation energy per atom
(against CHGNet elemental references) for MP-20 and Perov-5, and CHGNet's energy per
atom for Carbon-24, all single-point at the given geometry. Published property EMDs are therefore not
comparable with ours in absolute value.
"""
from __future__ import annotations

from typing import Callable


def property_function(protocol: str) -> tuple[Callable[[list], list], str]:
    """(structures -> values, name) for a CDVAE protocol name (mp20 / perovskite / carbon)."""
    if protocol == "carbon":
        return chgnet_energy_per_atom, "CHGNet energy per atom [eV/atom] (static)"
    return chgnet_formation_energy, "CHGNet formation energy per atom [eV/atom] (static)"


def chgnet_energy_per_atom(structures: list) -> list:
    from .potential import static_energies

    return static_energies(structures)


def chgnet_formation_energy(structures: list) -> list:
    from .elemental_refs import load_elemental_references
    from .hull import formation_energy_per_atom
    from .potential import static_energies

    mu = load_elemental_references()
    out = []
    for s, e in zip(structures, static_energies(structures)):
        if e is None:
            out.append(None)
            continue
        try:
            out.append(formation_energy_per_atom(s.composition, e, mu))
        except ValueError:
            out.append(None)
    return out
