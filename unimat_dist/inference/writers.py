"""Write generated structures: one CIF per sample (``<out>/cif/sample_000000.cif``) or one extxyz file."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence


def write_structures(structures: Sequence, out_dir: str | Path, fmt: str = "cif") -> list[Path]:
    """Write the non-None structures; the sample index is kept in file names / ``info['sample']``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if fmt == "cif":
        from pymatgen.io.cif import CifWriter

        d = out_dir / "cif"
        d.mkdir(exist_ok=True)
        files = []
        for i, s in enumerate(structures):
            if s is None:
                continue
            path = d / f"sample_{i:06d}.cif"
            CifWriter(s).write_file(path)
            files.append(path)
        return files
    if fmt == "extxyz":
        from ase.io import write
        from pymatgen.io.ase import AseAtomsAdaptor

        atoms = []
        for i, s in enumerate(structures):
            if s is None:
                continue
            a = AseAtomsAdaptor.get_atoms(s)
            a.info["sample"] = i
            atoms.append(a)
        path = out_dir / "samples.extxyz"
        write(path, atoms, format="extxyz")
        return [path]
    raise ValueError(f"format must be 'cif' or 'extxyz', got {fmt!r}")
