"""Lossless crystal <-> UniMat tensor codec.

An atom of element e is written into the cell (h, w) of e, in the next free slot l of that cell,
in the order the atoms appear in the structure: ``positions[l, h, w] = (x, y, z)``. Unused slots
hold the null location (-1, -1, -1) and ``mask[l, h, w] = False``. Fractional coordinates are wrapped
into [0, 1). Decoding reverses this exactly (site order becomes grouped by element).

``encode_arrays``/``decode_arrays`` are the NumPy core (no pymatgen), so fast readers can feed it
atomic numbers and coordinates directly; ``encode``/``decode`` wrap it for pymatgen structures.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from . import periodic_table as pt
from .lattice import matrix_to_params, params_to_matrix
from .spec import NULL_VALUE, UniMatSpec


@dataclass
class UniMatTensor:
    """One encoded crystal.

    positions: (L, H, W, 3) float64, fractional in [0, 1) or Cartesian Angstrom; null slots at -1.
    mask: (L, H, W) bool, True where a slot holds an atom.
    lattice: (6,) [a, b, c, alpha, beta, gamma] (fractional) or (9,) flattened matrix (Cartesian).
    """

    positions: np.ndarray
    mask: np.ndarray
    lattice: np.ndarray

    @property
    def num_atoms(self) -> int:
        return int(self.mask.sum())

    def element_mask(self) -> np.ndarray:
        """(H, W) float32 composition conditioning by element type: 1 where the element is present."""
        return self.mask.any(axis=0).astype(np.float32)

    def count_mask(self) -> np.ndarray:
        """(L, H, W) float32 composition conditioning by exact counts: 1 for every occupied slot."""
        return self.mask.astype(np.float32)

    def counts(self) -> np.ndarray:
        """(H, W) int number of atoms per element cell."""
        return self.mask.sum(axis=0)


@dataclass
class UniMatBatch:
    """A batch of encoded crystals: positions (B, L, H, W, 3), mask (B, L, H, W), lattice (B, D)."""

    positions: np.ndarray
    mask: np.ndarray
    lattice: np.ndarray

    def __len__(self) -> int:
        return self.positions.shape[0]

    def __getitem__(self, i: int) -> UniMatTensor:
        return UniMatTensor(self.positions[i], self.mask[i], self.lattice[i])

    @classmethod
    def stack(cls, tensors: Sequence[UniMatTensor]) -> "UniMatBatch":
        return cls(
            np.stack([t.positions for t in tensors]),
            np.stack([t.mask for t in tensors]),
            np.stack([t.lattice for t in tensors]),
        )


# ---------------------------------------------------------------------------------------- arrays core
def _wrap01(frac: np.ndarray) -> np.ndarray:
    out = np.mod(frac, 1.0)
    out[out >= 1.0] = 0.0  # np.mod(-1e-17, 1) == 1.0 in float64
    return out


def encode_arrays(
    atomic_numbers: np.ndarray,
    frac_coords: np.ndarray,
    lattice_params: np.ndarray,
    spec: UniMatSpec,
    record: str | None = None,
) -> UniMatTensor:
    """Encode raw arrays: Z (N,), fractional coordinates (N, 3), lattice parameters (6,).

    ``record`` names the input in error messages. Raises ``ValueError`` for anything that cannot be
    represented exactly (no silent truncation).
    """
    where = f"{record}: " if record else ""
    z = np.asarray(atomic_numbers, dtype=np.int64).reshape(-1)
    frac = np.asarray(frac_coords, dtype=np.float64).reshape(-1, 3)
    params = np.asarray(lattice_params, dtype=np.float64).reshape(-1)
    if frac.shape[0] != z.shape[0]:
        raise ValueError(f"{where}{z.shape[0]} species but {frac.shape[0]} coordinate rows")
    if z.size == 0:
        raise ValueError(f"{where}structure has no atoms")
    if params.shape != (6,):
        raise ValueError(f"{where}lattice parameters must be 6 numbers, got shape {params.shape}")
    if not np.isfinite(frac).all():
        bad = int(np.nonzero(~np.isfinite(frac).all(axis=1))[0][0])
        raise ValueError(f"{where}non-finite (NaN/inf) coordinates at site {bad}")
    if not np.isfinite(params).all() or (params[:3] <= 0).any():
        raise ValueError(f"{where}invalid lattice parameters {params.tolist()}")
    if ((z < 1) | (z > 118)).any():
        raise ValueError(f"{where}atomic number out of the periodic table: {sorted(set(z[(z < 1) | (z > 118)].tolist()))}")

    hw = spec.cell_of_z[z]
    outside = hw[:, 0] < 0
    if outside.any():
        missing = sorted({pt.SYMBOLS[v - 1] for v in z[outside].tolist()})
        system = "the reduced system " + ",".join(spec.elements) if spec.elements else "the table"
        raise ValueError(f"{where}element(s) {', '.join(missing)} outside {system}")

    cell = hw[:, 0] * spec.W + hw[:, 1]
    order = np.argsort(cell, kind="stable")
    sorted_cells = cell[order]
    first = np.searchsorted(sorted_cells, sorted_cells, side="left")
    slot = np.empty_like(cell)
    slot[order] = np.arange(cell.size) - first
    if slot.max() >= spec.L:
        cells, counts = np.unique(cell, return_counts=True)
        over = [
            f"{pt.SYMBOLS[spec.z_at_cell[c // spec.W, c % spec.W] - 1]}={n}" for c, n in zip(cells, counts) if n > spec.L
        ]
        raise ValueError(
            f"{where}too many atoms of one element for max_atoms_per_element L={spec.L}: {', '.join(over)}"
        )

    frac = _wrap01(frac)
    positions = np.full(spec.shape, NULL_VALUE, dtype=np.float64)
    mask = np.zeros(spec.shape[:3], dtype=bool)
    if spec.coords == "fractional":
        positions[slot, hw[:, 0], hw[:, 1]] = frac
        lattice = params.copy()
    else:
        matrix = params_to_matrix(params)
        positions[slot, hw[:, 0], hw[:, 1]] = frac @ matrix
        lattice = matrix.reshape(9)
    mask[slot, hw[:, 0], hw[:, 1]] = True
    return UniMatTensor(positions, mask, lattice)


def decode_arrays(tensor: UniMatTensor, spec: UniMatSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of ``encode_arrays``: (Z (N,), fractional coordinates in [0,1) (N, 3), lattice params (6,)).

    Sites come out grouped by cell in (h, w) order, slots in increasing l within a cell.
    """
    pos = np.asarray(tensor.positions)
    if pos.shape != spec.shape:
        raise ValueError(f"positions have shape {pos.shape}, the spec expects {spec.shape}")
    mask = tensor.mask
    if mask is None:
        if spec.coords != "fractional":
            raise ValueError("a Cartesian tensor needs its mask to be decoded")
        mask = infer_mask(pos)
    mask = np.asarray(mask, dtype=bool) & spec.allowed_cells[None]
    hh, ww, ll = np.nonzero(mask.transpose(1, 2, 0))  # sites ordered by cell (h, w), then slot l
    z = spec.z_at_cell[hh, ww]
    coords = pos[ll, hh, ww]
    lat = np.asarray(tensor.lattice, dtype=np.float64)
    if spec.coords == "fractional":
        if lat.shape != (6,):
            raise ValueError(f"fractional lattice must have 6 parameters, got shape {lat.shape}")
        params = lat
        frac = coords
    else:
        if lat.shape not in ((9,), (3, 3)):
            raise ValueError(f"Cartesian lattice must be a 3x3 matrix (9 numbers), got shape {lat.shape}")
        matrix = lat.reshape(3, 3)
        params = matrix_to_params(matrix)
        frac = coords @ np.linalg.inv(matrix)
    return z, _wrap01(np.array(frac, dtype=np.float64)), np.array(params, dtype=np.float64)


def infer_mask(positions, threshold: float = -0.5):
    """The documented rule for raw or noisy tensors: a slot holds an atom iff the mean of its three
    coordinates is above ``threshold`` (halfway between the null value -1 and the atom range [0, 1))."""
    return positions.mean(-1) > threshold


# ---------------------------------------------------------------------------------------- pymatgen
def structure_arrays(structure, record: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Z, fractional coordinates, lattice parameters) of an ordered pymatgen structure."""
    where = f"{record}: " if record else ""
    if not structure.is_ordered:
        bad = next(i for i, site in enumerate(structure) if not site.is_ordered)
        raise ValueError(
            f"{where}partial occupancy/disorder at site {bad} ({structure[bad].species}); "
            "UniMat represents ordered structures only"
        )
    z = []
    for i, sp in enumerate(structure.species):
        # DummySpecies (vacancies, "X") carry a meaningless Z; only real elements are representable.
        zi = getattr(sp, "Z", None) if getattr(sp, "symbol", None) in pt.Z_OF else None
        if zi is None:
            raise ValueError(f"{where}site {i} holds {sp!s}, which is not an element")
        z.append(zi)
    return np.asarray(z, dtype=np.int64), structure.frac_coords, np.asarray(structure.lattice.parameters)


def encode(structure, spec: UniMatSpec, record: str | None = None) -> UniMatTensor:
    """Encode a ``pymatgen.core.Structure``; ``ValueError`` (naming ``record``) if it cannot be represented."""
    z, frac, params = structure_arrays(structure, record)
    return encode_arrays(z, frac, params, spec, record=record)


def decode(tensor: UniMatTensor, spec: UniMatSpec):
    """Decode to a ``pymatgen.core.Structure`` (species, fractional coordinates wrapped into [0, 1))."""
    from pymatgen.core import Lattice, Structure

    z, frac, params = decode_arrays(tensor, spec)
    if spec.coords == "fractional":
        lattice = Lattice.from_parameters(*params)
    else:
        lattice = Lattice(np.asarray(tensor.lattice, dtype=np.float64).reshape(3, 3))
    species = [pt.SYMBOLS[v - 1] for v in z.tolist()]
    return Structure(lattice, species, frac, coords_are_cartesian=False)


def encode_batch(structures: Iterable, spec: UniMatSpec, records: Sequence[str] | None = None) -> UniMatBatch:
    """Encode many structures into one stacked batch."""
    structures = list(structures)
    records = records if records is not None else [None] * len(structures)
    return UniMatBatch.stack([encode(s, spec, r) for s, r in zip(structures, records)])


def decode_batch(batch: UniMatBatch, spec: UniMatSpec) -> list:
    """Decode every crystal of a batch."""
    return [decode(batch[i], spec) for i in range(len(batch))]
