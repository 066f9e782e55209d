"""Write data in the GNoME release layout (``data/GNOME_FORMAT.md``): fixtures and synthetic benchmarks.

* ``write_release(out, entries)``: ``stable_materials_summary.csv`` + ``by_id.zip`` (+
  ``by_reduced_formula.zip``) from ``GnomeEntry`` objects, streaming (the zip is written member by
  member, so 200k entries need no more memory than one).
* ``entry_from_structure(structure, ...)``: an entry from a pymatgen structure, following the recipe
  (pymatgen ``CifWriter`` text, ``SpacegroupAnalyzer`` symmetry, pymatgen volume/density).
* ``synthetic_entries(bases, n, seed)``: ``n`` entries made by perturbing base structures (strain,
  angle and coordinate noise), with CIF text written by ``p1_cif`` - the same layout as ``CifWriter``
  without its per-structure cost - for GNoME-sized benchmarks.
"""
from __future__ import annotations

import csv
import hashlib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from unimat_dist.representation.lattice import cell_volume
from unimat_dist.representation.periodic_table import SYMBOLS

from .readers import GNOME_ARCHIVE, GNOME_SUMMARY
from .splits import formulas

SUMMARY_COLUMNS = (
    "Composition,MaterialId,Reduced Formula,Elements,NSites,Volume,Density,Point Group,Space Group,"
    "Space Group Number,Crystal System,Uncorrected Energy,Corrected Energy,Formation Energy Per Atom,"
    "Decomposition Energy Per Atom,Dimensionality Cheon,Bandgap,Is Train,Decomposition Energy Per Atom All,"
    "Decomposition Energy Per Atom Relative,Decomposition Energy Per Atom MP,Decomposition Energy Per Atom MP OQMD"
).split(",")


@dataclass
class GnomeEntry:
    material_id: str
    cif: str | None  # None: a summary row whose CIF is missing from the archive
    row: dict[str, str] = field(default_factory=dict)  # summary columns (SUMMARY_COLUMNS) as text


def material_id(*parts) -> str:
    """10 lower-case hex characters, like GNoME's MaterialId."""
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:10]


def p1_cif(z: np.ndarray, frac: np.ndarray, params: np.ndarray, title: str | None = None) -> str:
    """A P1 CIF in pymatgen ``CifWriter``'s layout (8 decimals, labels Fe0 Fe1 ..., occupancy 1)."""
    _, reduced = formulas(z)
    a, b, c, al, be, ga = (float(v) for v in params)
    volume = cell_volume(params, floor=0.0)
    counts = np.bincount(z, minlength=119)
    nz = [v for v in dict.fromkeys(z.tolist())]
    units = int(np.gcd.reduce(counts[counts > 0]))
    lines = [
        "# generated using pymatgen",
        f"data_{title or reduced}",
        "_symmetry_space_group_name_H-M   'P 1'",
        f"_cell_length_a   {a:.8f}",
        f"_cell_length_b   {b:.8f}",
        f"_cell_length_c   {c:.8f}",
        f"_cell_angle_alpha   {al:.8f}",
        f"_cell_angle_beta   {be:.8f}",
        f"_cell_angle_gamma   {ga:.8f}",
        "_symmetry_Int_Tables_number   1",
        f"_chemical_formula_structural   {reduced}",
        "_chemical_formula_sum   '" + " ".join(f"{SYMBOLS[v - 1]}{counts[v]}" for v in nz) + "'",
        f"_cell_volume   {volume:.8f}",
        f"_cell_formula_units_Z   {units}",
        "loop_",
        " _symmetry_equiv_pos_site_id",
        " _symmetry_equiv_pos_as_xyz",
        "  1  'x, y, z'",
        "loop_",
        " _atom_site_type_symbol",
        " _atom_site_label",
        " _atom_site_symmetry_multiplicity",
        " _atom_site_fract_x",
        " _atom_site_fract_y",
        " _atom_site_fract_z",
        " _atom_site_occupancy",
    ]
    for i, (zi, (x, y, w)) in enumerate(zip(z.tolist(), frac.tolist())):
        s = SYMBOLS[zi - 1]
        lines.append(f"  {s}  {s}{i}  1  {x:.8f}  {y:.8f}  {w:.8f}  1")
    return "\n".join(lines) + "\n"


def _summary_row(z: np.ndarray, mid: str, volume: float, density: float, symmetry: tuple[str, str, int, str],
                 rng: np.random.Generator, bandgap_nan: bool) -> dict[str, str]:
    _, reduced = formulas(z)
    counts = np.bincount(z, minlength=119)
    present = sorted((SYMBOLS[v - 1], int(counts[v])) for v in np.flatnonzero(counts).tolist())
    els = list(dict.fromkeys(SYMBOLS[v - 1] for v in z.tolist()))  # order of appearance
    e_form = rng.normal(-1.0, 0.6)
    e_corr = e_form * z.size - 4.0 * z.size
    pg, sg, sgn, system = symmetry
    return {
        "Composition": "".join(f"{el}{n}" for el, n in present),  # explicit counts: Ac10As1Sn6
        "MaterialId": mid,
        "Reduced Formula": reduced,
        "Elements": str(els),
        "NSites": str(int(z.size)),
        "Volume": f"{volume:.4f}",
        "Density": f"{density:.4f}",
        "Point Group": pg,
        "Space Group": sg,
        "Space Group Number": str(sgn),
        "Crystal System": system,
        "Uncorrected Energy": f"{e_corr + rng.normal(0, 0.5):.4f}",
        "Corrected Energy": f"{e_corr:.4f}",
        "Formation Energy Per Atom": f"{e_form:.4f}",
        "Decomposition Energy Per Atom": f"{-abs(rng.normal(0, 0.05)):.4f}",
        "Dimensionality Cheon": "3D",
        "Bandgap": "" if bandgap_nan else f"{abs(rng.normal(0.5, 1.0)):.4f}",
        "Is Train": str(bool(rng.random() < 0.9)),
        "Decomposition Energy Per Atom All": "0.0000",
        "Decomposition Energy Per Atom Relative": f"{-abs(rng.normal(0, 0.01)):.4f}",
        "Decomposition Energy Per Atom MP": f"{-abs(rng.normal(0, 0.05)):.4f}",
        "Decomposition Energy Per Atom MP OQMD": f"{-abs(rng.normal(0, 0.05)):.4f}",
    }


def entry_from_structure(structure, mid: str, rng: np.random.Generator, bandgap_nan: bool = False) -> GnomeEntry:
    """A GNoME entry from a pymatgen structure, following GNOME_FORMAT.md's recipe."""
    from pymatgen.io.cif import CifWriter
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        sga = SpacegroupAnalyzer(structure, symprec=0.1)
        symmetry = (sga.get_point_group_symbol(), sga.get_space_group_symbol(), sga.get_space_group_number(),
                    sga.get_crystal_system())
    except Exception:  # spglib refuses disordered fixtures' structures
        symmetry = ("1", "P1", 1, "triclinic")
    # the majority species of each site (fixtures include disordered structures)
    z = np.array([max(site.species.items(), key=lambda kv: kv[1])[0].Z for site in structure], dtype=np.int64)
    row = _summary_row(z, mid, structure.volume, float(structure.density), symmetry, rng, bandgap_nan)
    return GnomeEntry(mid, str(CifWriter(structure)), row)


def synthetic_entries(bases: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n: int, seed: int = 0) -> Iterator[GnomeEntry]:
    """``n`` perturbed copies of base structures (Z, frac, lattice parameters), cycling through them.

    Each copy: lattice lengths x (1 + N(0, 0.02)), angles + N(0, 0.5 deg), coordinates + N(0, 0.01)
    (wrapped); composition unchanged, so copies share their base's split.
    """
    rng = np.random.default_rng(seed)
    for i in range(n):
        z, frac, params = bases[i % len(bases)]
        p = params.copy()
        p[:3] *= 1.0 + rng.normal(0.0, 0.02, 3)
        p[3:] += rng.normal(0.0, 0.5, 3)
        f = (frac + rng.normal(0.0, 0.01, frac.shape)) % 1.0
        mid = material_id("synthetic", seed, i)
        volume = cell_volume(p)
        row = _summary_row(z, mid, volume, 0.0, ("1", "P1", 1, "triclinic"), rng, bandgap_nan=bool(rng.random() < 0.2))
        yield GnomeEntry(mid, p1_cif(z, f, p), row)


def write_release(out: str | Path, entries: Iterable[GnomeEntry], by_reduced_formula: bool = True) -> int:
    """Write ``gnome_data``-style files into ``out``; returns the number of summary rows."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    seen_formulas: set[str] = set()
    with open(out / GNOME_SUMMARY, "w", newline="", encoding="utf-8") as fh, \
            zipfile.ZipFile(out / GNOME_ARCHIVE, "w", zipfile.ZIP_DEFLATED) as by_id, \
            (zipfile.ZipFile(out / "by_reduced_formula.zip", "w", zipfile.ZIP_DEFLATED) if by_reduced_formula
             else _NullZip()) as by_formula:
        writer = csv.writer(fh)
        writer.writerow([""] + SUMMARY_COLUMNS)
        for e in entries:
            writer.writerow([str(n)] + [e.row.get(c, "") for c in SUMMARY_COLUMNS])
            if e.cif is not None:
                by_id.writestr(_member(f"by_id/{e.material_id}.CIF"), e.cif)
                rf = e.row.get("Reduced Formula", "")
                if rf and rf not in seen_formulas:  # one structure per composition, as in the release
                    seen_formulas.add(rf)
                    by_formula.writestr(_member(f"by_reduced_formula/{rf}.CIF"), e.cif)
            n += 1
    return n


def _member(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # reproducible archive bytes
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


class _NullZip:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def writestr(self, *args) -> None:
        return None


def read_bases(paths: Iterable[str | Path], limit_per_file: int | None = None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(Z, frac, lattice params) of the structures in CDVAE CSVs, via the fast CIF reader."""
    from unimat_dist.datasets import iter_cdvae_csv

    from .fast_cif import parse_p1_cif

    out = []
    for p in paths:
        for k, rec in enumerate(iter_cdvae_csv(p)):
            if limit_per_file is not None and k >= limit_per_file:
                break
            out.append(parse_p1_cif(rec.cif))
    return out
