"""A purely repulsive soft-sphere potential for the cheap pre-relaxation of random structures
(AIRSS's ``buildcell`` pushes atoms apart in the same spirit before any expensive relaxation).

Pair energy ``eps * (1 - d / R_ij)^2`` for ``d < R_ij`` with ``R_ij = scale * (r_i + r_j)`` from atomic
radii, zero beyond: it only separates overlapping atoms and has no opinion about bonding.
"""
from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator, all_changes


class SoftSphere(Calculator):
    implemented_properties = ["energy", "forces", "free_energy"]

    def __init__(self, radii: dict[int, float], scale: float = 1.0, eps: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.radii = radii  # atomic number -> radius (A)
        self.scale = scale
        self.eps = eps

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        from ase.neighborlist import neighbor_list

        super().calculate(atoms, properties, system_changes)
        z = self.atoms.get_atomic_numbers()
        r = np.array([self.radii[int(x)] for x in z]) * self.scale
        cutoff = 2 * r.max()
        i, j, d, vec = neighbor_list("ijdD", self.atoms, cutoff)
        rij = r[i] + r[j]
        m = (d < rij) & (d > 1e-8)
        i, j, d, vec, rij = i[m], j[m], d[m], vec[m], rij[m]
        x = 1.0 - d / rij
        energy = 0.5 * self.eps * np.sum(x**2)  # each pair appears twice in the neighbour list
        # dE/dd per ordered pair (half of the pair's derivative); force on i points away from j
        de_dd = -self.eps * x / rij
        fvec = (de_dd / d)[:, None] * vec  # vec = r_j - r_i
        forces = np.zeros((len(self.atoms), 3))
        np.add.at(forces, i, fvec)
        np.add.at(forces, j, -fvec)
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}


def soft_sphere_relax(structure, steps: int = 200, scale: float = 1.0, fmax: float = 1e-3):
    """Push overlapping atoms apart at fixed cell; returns the new pymatgen structure."""
    from ase.optimize import FIRE
    from pymatgen.core import Element
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(structure)
    radii = {int(z): float(Element.from_Z(int(z)).atomic_radius or 1.0) for z in set(atoms.get_atomic_numbers())}
    atoms.calc = SoftSphere(radii, scale=scale)
    FIRE(atoms, logfile=None).run(fmax=fmax, steps=steps)
    atoms.wrap()
    return AseAtomsAdaptor.get_structure(atoms)
