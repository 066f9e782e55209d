"""A synthetic GNoME release of any size, for sizing clusters and testing the pipeline at scale.

    unimat data synth-gnome 2200000 /data/gnome_synth             # ~2.2M rows, fixed seed, streaming
    unimat data synth-gnome 10000 /tmp/g --stats-from stable_materials_summary.csv

Layout exactly as ``gs://gdm_materials_discovery/gnome_data`` (``data/GNOME_FORMAT.md``):
``stable_materials_summary.csv`` (an unnamed index column, then the release's columns),
``by_id.zip`` (``by_id/<MaterialId>.CIF``), ``by_composition.zip`` and ``by_reduced_formula.zip``
(the first structure of each composition / reduced formula, as the release keeps one per composition).

Structures are drawn from and perturbed around the bundled real crystals (MP-20 subset, Perov-5,
Carbon-24), then held to a target distribution of elements per structure, atoms per cell and, when the
target has one, volume per atom (the lattice size per atom):

1. draw the number of elements ``k``, an atoms-per-cell bin and (with a volume target) a volume-per-atom
   bin from the target histograms;
2. pick a bundled crystal and a supercell (1, 2, 3, 4, 6 or 8 cells) whose atom count lands in the bin,
   that has at most ``k`` elements and whose volume per atom lands in its bin (else the nearest bin that
   has such a crystal: crystals are chosen, never rescaled, so bonds keep real lengths);
3. raise its element count to ``k`` by chemically similar substitution, the way GNoME's candidates were
   made (SAPS): half of the sites of one element become the element next to it in its periodic-table
   group (else its period) that the crystal does not contain yet;
4. strain the lattice (lengths x (1 + N(0, 0.02)), angles + N(0, 0.5 deg)) and jitter the coordinates
   (N(0, 0.01), wrapped), as ``gnome_format.synthetic_entries`` does.

The target histograms: ``DEFAULT_STATS`` below, an approximation of the shape of GNoME's stable set
(mostly ternary and quaternary, cells up to ~80 atoms); the real summary CSV is not redistributable
here, so its exact histograms are not in the repository. ``--stats-from`` reads them from any real
``stable_materials_summary.csv`` (its ``Elements``, ``NSites`` and ``Volume`` columns) - then the synthetic
release follows the real one, volume per atom included. ``DEFAULT_STATS`` has no volume target (the
volumes are the bundled crystals' own: median 12.4 A^3/atom, carbon allotropes ~6). The generator reports
the target and achieved histograms at the end.

Same seed, same size, same stats -> byte-identical files. Memory is flat in the number of rows (the
zips are written member by member; only the set of compositions already written is kept, 8 bytes each).
Files are written under temporary names and renamed when complete; a folder holding other files is refused.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from unimat_dist.representation.lattice import cell_volume
from unimat_dist.representation.periodic_table import COL_OF_Z, ROW_OF_Z, SYMBOLS, Z_AT_CELL

from .gnome_format import SUMMARY_COLUMNS, GnomeEntry, _member, _summary_row, p1_cif
from .readers import GNOME_ARCHIVE, GNOME_SUMMARY

# Atoms-per-cell bins (inclusive) and the default target: an approximation of GNoME's stable set, stated
# as such (see the module doc; --stats-from replaces it with a real summary CSV's histograms).
NSITES_BINS = ((1, 4), (5, 8), (9, 12), (13, 20), (21, 40), (41, 80), (81, 400))
DEFAULT_STATS = {
    "about": "approximate shape of GNoME's stable materials (Merchant et al., Nature 624, 2023): mostly "
             "ternary/quaternary, most cells <= 40 atoms; not the release's measured histograms",
    "n_elements": {"1": 0.002, "2": 0.04, "3": 0.32, "4": 0.47, "5": 0.15, "6": 0.018},
    "nsites": {"1-4": 0.04, "5-8": 0.14, "9-12": 0.18, "13-20": 0.34, "21-40": 0.24, "41-80": 0.06, "81-400": 0.0},
}
# Volume-per-atom bins (A^3/atom, lower bound inclusive): the lattice size per atom.
VOLUME_BINS = ((0, 8), (8, 12), (12, 16), (16, 20), (20, 25), (25, 35), (35, 1000))
SUPERCELLS = ((1, 1, 1), (2, 1, 1), (3, 1, 1), (2, 2, 1), (3, 2, 1), (2, 2, 2))  # 1, 2, 3, 4, 6, 8 cells
MAX_SUBSTITUTIONS = 3
MAX_Z = 94  # substitutes stop at Pu: heavier actinides are not in DFT databases' stable sets
NOBLE_GASES = ("He", "Ne", "Ar", "Kr", "Xe", "Rn")
OUTPUT_FILES = (GNOME_SUMMARY, GNOME_ARCHIVE, "by_composition.zip", "by_reduced_formula.zip", "synth_gnome.json")


def bin_label(lo: int, hi: int) -> str:
    return f"{lo}-{hi}"


def nsites_bin(n: int) -> str:
    for lo, hi in NSITES_BINS:
        if lo <= n <= hi:
            return bin_label(lo, hi)
    return bin_label(*NSITES_BINS[-1])


def volume_bin(v: float) -> str:
    for lo, hi in VOLUME_BINS:
        if lo <= v < hi:
            return bin_label(lo, hi)
    return bin_label(*VOLUME_BINS[-1])


def _normalised(hist: dict[str, float]) -> dict[str, float]:
    total = float(sum(hist.values()))
    if total <= 0:
        raise ValueError("a target histogram is empty")
    return {k: float(v) / total for k, v in hist.items()}


def stats_from_summary(path: str | Path, limit: int | None = None) -> dict:
    """The element-count, atoms-per-cell and volume-per-atom histograms of a GNoME summary CSV (real or
    synthetic; the volume one only when the CSV has a usable ``Volume`` column)."""
    import ast

    n_el: dict[str, int] = {}
    sites: dict[str, int] = {bin_label(*b): 0 for b in NSITES_BINS}
    volumes: dict[str, int] = {bin_label(*b): 0 for b in VOLUME_BINS}
    rows = with_volume = 0
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = [h.strip().lower() for h in next(reader)]
        i_el, i_ns = header.index("elements"), header.index("nsites")
        i_vol = header.index("volume") if "volume" in header else None
        for row in reader:
            if limit is not None and rows >= limit:
                break
            try:
                els = ast.literal_eval(row[i_el])  # "['Al', 'Os', 'Ac']": a literal, never code
                n = int(float(row[i_ns]))
            except (ValueError, SyntaxError, IndexError):
                continue
            key = str(min(len(set(els)), 6)) if els else "1"
            n_el[key] = n_el.get(key, 0) + 1
            sites[nsites_bin(n)] += 1
            rows += 1
            try:
                v = float(row[i_vol]) / n if i_vol is not None and n > 0 else float("nan")
            except (ValueError, IndexError):
                v = float("nan")
            if np.isfinite(v) and v > 0:
                volumes[volume_bin(v)] += 1
                with_volume += 1
    if not rows:
        raise ValueError(f"{path}: no usable rows (Elements, NSites)")
    out = {"about": f"histograms of {path} ({rows:,} rows)", "rows": rows,
           "n_elements": {k: v / rows for k, v in sorted(n_el.items())},
           "nsites": {k: v / rows for k, v in sites.items()}}
    if with_volume:
        out["volume_per_atom"] = {k: v / with_volume for k, v in volumes.items()}
    return out


def _similar(z: int, present: set[int]) -> int | None:
    """The element next to ``z`` in its group (one row up or down), else in its period; not in ``present``."""
    row, col = int(ROW_OF_Z[z]), int(COL_OF_Z[z])
    candidates = [(row + 1, col), (row - 1, col), (row, col + 1), (row, col - 1), (row + 2, col), (row - 2, col)]
    for r, c in candidates:
        if 0 <= r < Z_AT_CELL.shape[0] and 0 <= c < Z_AT_CELL.shape[1]:
            s = int(Z_AT_CELL[r, c])
            if 0 < s <= MAX_Z and s not in present and SYMBOLS[s - 1] not in NOBLE_GASES:
                return s
    return None


def _material_ids(seed: int) -> Iterator[str]:
    """Distinct 10-hex-character ids: a bijection of the row counter on 40 bits (sha256 prefixes of 2.2M
    rows would collide ~2 times), scrambled so they look like GNoME's."""
    mask = (1 << 40) - 1
    mult = 0x9E3779B97F & mask | 1  # odd: invertible mod 2^40
    offset = int.from_bytes(hashlib.sha256(f"synth-gnome:{seed}".encode()).digest()[:5], "big")
    i = 0
    while True:
        x = (i * mult + offset) & mask
        x ^= x >> 17
        x = (x * 0xD6E8FEB867) & mask  # odd multiplier: still a bijection
        yield f"{x:010x}"
        i += 1


@dataclass
class Base:
    z: np.ndarray
    frac: np.ndarray
    params: np.ndarray


class Synthesizer:
    """Draws GNoME-like entries around ``bases`` to the target ``stats`` (see the module doc)."""

    def __init__(self, bases: list[tuple[np.ndarray, np.ndarray, np.ndarray]], stats: dict | None = None,
                 seed: int = 0) -> None:
        stats = stats or DEFAULT_STATS
        self.target_k = _normalised({int(k): v for k, v in stats["n_elements"].items() if float(v) > 0})
        self.target_bins = _normalised({k: v for k, v in stats["nsites"].items() if float(v) > 0})
        self.bases = [Base(np.asarray(z, np.int64), np.asarray(f, np.float64), np.asarray(p, np.float64))
                      for z, f, p in bases if len(z)]
        if not self.bases:
            raise ValueError("no base structures")
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        # (bin, k) -> [(base index, supercell index)] with the base's element count <= k <= it + MAX_SUBSTITUTIONS
        self.options: dict[tuple[str, int], list[tuple[int, int]]] = {}
        for bi, b in enumerate(self.bases):
            kb = len(set(b.z.tolist()))
            for si, sc in enumerate(SUPERCELLS):
                n = len(b.z) * int(np.prod(sc))
                lab = nsites_bin(n)
                for k in range(kb, kb + MAX_SUBSTITUTIONS + 1):
                    if k <= n:
                        self.options.setdefault((lab, k), []).append((bi, si))
        self._k_keys = np.array(sorted(self.target_k))
        self._k_p = np.array([self.target_k[k] for k in self._k_keys])
        self._bin_keys = list(self.target_bins)
        self._bin_p = np.array([self.target_bins[k] for k in self._bin_keys])
        # volume per atom: a target only when the stats have one (then the draw order gains one choice)
        vol = {k: v for k, v in (stats.get("volume_per_atom") or {}).items() if float(v) > 0}
        unknown = sorted(set(vol) - {bin_label(*b) for b in VOLUME_BINS})
        if unknown:
            raise ValueError(f"volume_per_atom bins {unknown} are not among {[bin_label(*b) for b in VOLUME_BINS]}")
        self.target_volume = _normalised(vol) if vol else None
        self._vol_keys = list(self.target_volume or {})
        self._vol_p = np.array([self.target_volume[k] for k in self._vol_keys]) if vol else None
        self._vol_index = {bin_label(*b): i for i, b in enumerate(VOLUME_BINS)}
        # (bin, k) -> {volume bin index: options}: the same options as above, split by the base's volume/atom
        self.volume_options: dict[tuple[str, int], dict[int, list[tuple[int, int]]]] = {}
        if self.target_volume is not None:
            base_vbin = [self._vol_index[volume_bin(cell_volume(b.params) / len(b.z))] for b in self.bases]
            for key, opts in self.options.items():
                split = self.volume_options.setdefault(key, {})
                for bi, si in opts:
                    split.setdefault(base_vbin[bi], []).append((bi, si))

    def _choose(self) -> tuple[Base, tuple[int, int, int], int]:
        k = int(self.rng.choice(self._k_keys, p=self._k_p))
        lab = self._bin_keys[int(self.rng.choice(len(self._bin_keys), p=self._bin_p))]
        key = (lab, k)
        if key not in self.options:  # no crystal reaches this corner: nearest element count that does, same bin
            key = next((c for dk in range(1, 8) for c in ((lab, k - dk), (lab, k + dk)) if c in self.options),
                       next(iter(self.options)))  # nothing in this bin at all (e.g. 81-400): any option
        opts = self.options[key]
        if self.target_volume is not None:
            want = self._vol_index[self._vol_keys[int(self.rng.choice(len(self._vol_keys), p=self._vol_p))]]
            split = self.volume_options[key]
            opts = split[min(split, key=lambda vb: (abs(vb - want), vb))]  # that bin, else the nearest one
        bi, si = opts[int(self.rng.integers(len(opts)))]
        return self.bases[bi], SUPERCELLS[si], k

    def draw(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(Z, fractional coordinates, lattice parameters) of one synthetic structure."""
        base, sc, k = self._choose()
        axes = self.rng.permutation(3)  # which lattice vectors the supercell repeats
        reps = np.ones(3, np.int64)
        reps[axes] = sc
        shifts = np.stack(np.meshgrid(*[np.arange(r) for r in reps], indexing="ij"), -1).reshape(-1, 3)
        frac = ((base.frac[None, :, :] + shifts[:, None, :]) / reps).reshape(-1, 3)
        z = np.tile(base.z, len(shifts))
        params = base.params.copy()
        params[:3] *= reps
        present = set(z.tolist())
        for _ in range(MAX_SUBSTITUTIONS):
            if len(present) >= k:
                break
            counts = {e: int((z == e).sum()) for e in present}
            donors = [e for e, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= 2]
            donor = next(((e, s) for e in donors if (s := _similar(e, present)) is not None), None)
            if donor is None:
                break
            e, s = donor
            sites = np.flatnonzero(z == e)
            take = self.rng.choice(sites, size=len(sites) // 2, replace=False)
            z[take] = s
            present.add(s)
        p = params.copy()
        p[:3] *= 1.0 + self.rng.normal(0.0, 0.02, 3)
        p[3:] += self.rng.normal(0.0, 0.5, 3)
        f = (frac + self.rng.normal(0.0, 0.01, frac.shape)) % 1.0
        return z, f, p

    def entries(self, n: int) -> Iterator[GnomeEntry]:
        ids = _material_ids(self.seed)
        masses = _atomic_masses()
        for _ in range(n):
            z, f, p = self.draw()
            mid = next(ids)
            volume = cell_volume(p)
            density = float(masses[z].sum()) * 1.66053906660 / volume if masses is not None else 0.0
            row = _summary_row(z, mid, volume, density, ("1", "P1", 1, "triclinic"), self.rng,
                               bandgap_nan=bool(self.rng.random() < 0.2))
            yield GnomeEntry(mid, p1_cif(z, f, p), row)


def _atomic_masses() -> np.ndarray | None:
    try:
        from pymatgen.core.periodic_table import Element
    except ImportError:  # lean install: densities written as 0
        return None
    return np.array([0.0] + [float(Element.from_Z(z).atomic_mass) for z in range(1, 119)])


def bundled_bases() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every structure of the bundled CDVAE splits (MP-20 subset, Perov-5, Carbon-24)."""
    from unimat_dist.bundled import bundled_dir

    from .gnome_format import read_bases

    return read_bases(sorted(bundled_dir("data").glob("*/*.csv.gz")))


def _refuse_foreign(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    foreign = [p.name for p in out.iterdir() if p.name not in OUTPUT_FILES and not p.name.endswith(".partial")]
    if foreign:
        raise FileExistsError(f"{out} holds files synth-gnome did not write ({', '.join(sorted(foreign)[:5])}); "
                              "choose an empty or new folder")
    if any((out / name).exists() for name in OUTPUT_FILES) and not overwrite:
        raise FileExistsError(f"{out} already holds a synthetic release; pass --overwrite to replace it")


def write_synthetic_release(out: str | Path, n: int, seed: int = 0, stats: dict | None = None,
                            bases=None, overwrite: bool = False, progress_every_s: float = 10.0,
                            stream=sys.stderr) -> dict:
    """Write an ``n``-row synthetic release into ``out``; returns its description (also ``synth_gnome.json``)."""
    out = Path(out)
    _refuse_foreign(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    stats = stats or DEFAULT_STATS
    synth = Synthesizer(bases if bases is not None else bundled_bases(), stats, seed)
    part = {name: out / (name + ".partial") for name in OUTPUT_FILES}
    achieved_k: dict[str, int] = {}
    achieved_bins: dict[str, int] = {bin_label(*b): 0 for b in NSITES_BINS}
    achieved_volume: dict[str, int] = {bin_label(*b): 0 for b in VOLUME_BINS}
    seen_comp: set[int] = set()
    seen_formula: set[int] = set()
    t0 = last = time.monotonic()
    with open(part[GNOME_SUMMARY], "w", newline="", encoding="utf-8") as fh, \
            zipfile.ZipFile(part[GNOME_ARCHIVE], "w", zipfile.ZIP_DEFLATED) as by_id, \
            zipfile.ZipFile(part["by_composition.zip"], "w", zipfile.ZIP_DEFLATED) as by_comp, \
            zipfile.ZipFile(part["by_reduced_formula.zip"], "w", zipfile.ZIP_DEFLATED) as by_formula:
        writer = csv.writer(fh)
        writer.writerow([""] + SUMMARY_COLUMNS)
        for i, e in enumerate(synth.entries(n)):
            writer.writerow([str(i)] + [e.row.get(c, "") for c in SUMMARY_COLUMNS])
            by_id.writestr(_member(f"by_id/{e.material_id}.CIF"), e.cif)
            for zf, seen, folder, name in ((by_comp, seen_comp, "by_composition", e.row["Composition"]),
                                           (by_formula, seen_formula, "by_reduced_formula", e.row["Reduced Formula"])):
                key = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")
                if key not in seen:
                    seen.add(key)
                    zf.writestr(_member(f"{folder}/{name}.CIF"), e.cif)
            k = str(min(e.row["Elements"].count("'") // 2, 6))
            achieved_k[k] = achieved_k.get(k, 0) + 1
            achieved_bins[nsites_bin(int(e.row["NSites"]))] += 1
            achieved_volume[volume_bin(float(e.row["Volume"]) / int(e.row["NSites"]))] += 1
            now = time.monotonic()
            if stream is not None and now - last >= progress_every_s:
                rate = (i + 1) / (now - t0)
                print(f"[synth-gnome] {i + 1:,}/{n:,} rows ({100 * (i + 1) / n:.0f}%) {rate:,.0f} rows/s "
                      f"ETA {(n - i - 1) / rate:,.0f} s", file=stream, flush=True)
                last = now
    info = {
        "rows": n, "seed": seed, "bases": len(synth.bases), "seconds": round(time.monotonic() - t0, 1),
        "compositions": len(seen_comp), "reduced_formulas": len(seen_formula),
        "target": {"about": stats.get("about", ""), "n_elements": synth.target_k and
                   {str(k): round(v, 4) for k, v in synth.target_k.items()},
                   "nsites": {k: round(v, 4) for k, v in synth.target_bins.items()},
                   "volume_per_atom": synth.target_volume and
                   {k: round(v, 4) for k, v in synth.target_volume.items()}},
        "achieved": {"n_elements": {k: round(v / max(n, 1), 4) for k, v in sorted(achieved_k.items())},
                     "nsites": {k: round(v / max(n, 1), 4) for k, v in achieved_bins.items()},
                     "volume_per_atom": {k: round(v / max(n, 1), 4) for k, v in achieved_volume.items()}},
        "bytes": {name: part[name].stat().st_size for name in OUTPUT_FILES if part[name].exists()},
        "licence": "synthetic; structures derived from the bundled CDVAE splits (MIT, see data/README.md)",
    }
    part["synth_gnome.json"].write_text(json.dumps(info, indent=1))
    for name in OUTPUT_FILES:  # complete: rename into place (the summary last, so its presence means done)
        if name != GNOME_SUMMARY:
            os.replace(part[name], out / name)
    os.replace(part[GNOME_SUMMARY], out / GNOME_SUMMARY)
    if stream is not None:
        print(f"[synth-gnome] wrote {n:,} rows in {info['seconds']:.1f} s to {out}", file=stream, flush=True)
        for key in ("n_elements", "nsites", "volume_per_atom"):
            target = info["target"][key]
            print(f"  {key:15s} target   " + ("  ".join(f"{k}:{v:.3f}" for k, v in target.items()) if target
                                             else "none (the bundled crystals' own)"), file=stream)
            print(f"  {'':15s} achieved " + "  ".join(f"{k}:{v:.3f}" for k, v in info["achieved"][key].items()),
                  file=stream)
    return info
