"""Checks shared by the data-pipeline tests: read a dataset back and compare it with its source."""
from __future__ import annotations

import csv
import io
import json
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

from data_pipeline.fast_cif import parse_p1_cif
from unimat_dist.shards import iter_samples, read_manifest
from unimat_dist.datasets import iter_cdvae_csv, resolve_split, structure_from_cif
from unimat_dist.representation import UniMatSpec, UniMatTensor, decode, encode_arrays

ROOT = Path(__file__).resolve().parents[1]
GNOME_MINI = ROOT / "tests" / "fixtures" / "gnome_mini"


def cdvae_sources(dataset: str, limit: int | None = None) -> dict[str, dict]:
    """{"split/id": {"cif", "split", "properties"}} of the bundled splits of a registry data set."""
    out = {}
    for split in ("train", "val", "test"):
        try:
            path = resolve_split(dataset, split, allow_substitute=False).path
        except FileNotFoundError:
            continue
        for k, rec in enumerate(iter_cdvae_csv(path)):
            if limit is not None and k >= limit:
                break
            out[f"{split}/{rec.id}"] = {"cif": rec.cif, "split": split, "properties": rec.properties}
    return out


def gnome_sources(root: Path = GNOME_MINI) -> dict[str, dict]:
    """{MaterialId: {"cif" (None when missing), "properties"}} of a GNoME-format folder."""
    out = {}
    with open(root / "stable_materials_summary.csv", newline="") as fh, zipfile.ZipFile(root / "by_id.zip") as zf:
        names = set(zf.namelist())
        for row in csv.DictReader(fh):
            mid = row["MaterialId"]
            name = f"by_id/{mid}.CIF"
            gap = row["Bandgap"]
            out[mid] = {
                "cif": zf.read(name).decode() if name in names else None,
                "properties": {"band_gap": float(gap) if gap else None,
                               "formation_energy_per_atom": float(row["Formation Energy Per Atom"])},
            }
    return out


def check_dataset(uri: str, sources: dict[str, dict], key=lambda meta: meta["id"], storage_options=None,
                  pymatgen_checks: int = 10) -> Counter:
    """Every sample decodes to exactly its source structure; returns samples per split.

    Tensors are compared with the encoding of the source (float32 positions: 1e-6), a few samples are
    also decoded to pymatgen structures and matched against pymatgen's parse of the source CIF.
    """
    from pymatgen.analysis.structure_matcher import StructureMatcher

    manifest = read_manifest(uri, storage_options)
    spec: UniMatSpec = manifest.spec
    matcher = StructureMatcher(ltol=1e-4, stol=1e-4, angle_tol=1e-3, primitive_cell=False, scale=False)
    seen: Counter = Counter()
    keys = set()
    for n, s in enumerate(iter_samples(manifest, storage_options=storage_options)):
        meta = s["meta"]
        k = key(meta)
        assert k not in keys, f"duplicate sample {k}"
        keys.add(k)
        src = sources[k]
        ref = encode_arrays(*parse_p1_cif(src["cif"]), spec)
        assert np.array_equal(s["mask"], ref.mask), k
        np.testing.assert_allclose(s["positions"], ref.positions, rtol=1e-6, atol=1e-6, err_msg=k)  # float32
        np.testing.assert_allclose(s["lattice"], ref.lattice, rtol=1e-12, err_msg=k)
        assert np.array_equal(s["composition"], ref.mask.sum(0)), k
        assert meta["num_atoms"] == int(ref.mask.sum())
        for name, value in src.get("properties", {}).items():
            got = meta["properties"].get(name)
            assert (got is None and value is None) or np.isclose(got, value), (k, name, got, value)
        if n < pymatgen_checks:
            decoded = decode(UniMatTensor(s["positions"].astype(np.float64), s["mask"], s["lattice"]), spec)
            source = structure_from_cif(src["cif"])
            assert decoded.composition == source.composition, k
            assert matcher.fit(decoded, source), k
        seen[meta["split"]] += 1
    assert sum(seen.values()) == sum(manifest.split_counts.values())
    assert dict(seen) == manifest.split_counts
    return seen


def quarantine_lines(fs_root: str, manifest: dict, storage_options=None) -> list[dict]:
    from unimat_dist.storage import join_uri, read_bytes

    out = []
    for rel in manifest["quarantine_files"]:
        body = read_bytes(join_uri(fs_root, rel), storage_options).decode()
        out += [json.loads(line) for line in io.StringIO(body) if line.strip()]
    return out
