"""Energy and stability evaluation of a structure set with the offline potential.

    from unimat_dist.evaluation import evaluate_energy
    result = evaluate_energy("samples/", steps=200)      # result.metrics (flat dict), result.records

Pipeline per structure: CHGNet relaxation of positions + cell (bounded steps) -> formation energy of the
final energy against CHGNet elemental references -> E_hull against the reference hull (default: the
bundled MP-20 hull points, see ``hull.py``). CHGNet's energies are already on Materials Project's
MP2020-corrected scale (it was trained on MPtrj's corrected energies): applying the MP2020 corrections
again made formation energies of the bundled MP-20 rows 0.26 eV/atom MAE off DFT instead of 0.050. Records are plain dicts, one
per structure, so that sets evaluated at different times can be compared (``compare_sets``).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .energy_metrics import compare_sets, convergence_rate, stability_counts, sun_rate
from .hull import ReferenceHull, formation_energy_per_atom
from unimat_dist.parallel import parallel_map
from .potential import DEFAULT_FMAX, DEFAULT_STEPS, RelaxResult, relax_task
from .structures_io import StructureRecord

log = logging.getLogger(__name__)


@dataclass
class EnergyResult:
    metrics: dict
    records: list[dict]
    relaxed: list = field(default_factory=list)  # final structures (None where relaxation failed)


def relax_records(records: Sequence[StructureRecord], steps: int = DEFAULT_STEPS, fmax: float = DEFAULT_FMAX,
                  workers: int | None = None, progress: bool = True, relax_cell: bool = True) -> list[RelaxResult]:
    """CHGNet relaxation of every record (records without a structure fail with their parse error)."""
    todo = [(i, r) for i, r in enumerate(records) if r.structure is not None]
    results = parallel_map(relax_task, [(r.structure, steps, fmax, relax_cell) for _, r in todo], workers=workers,
                           desc="relax", progress=progress, min_parallel=4, chunksize=1)
    out: list[RelaxResult] = [RelaxResult(False, 0, None, None, None, None, None, None, r.error or "no structure")
                              for r in records]
    for (i, _), res in zip(todo, results):
        out[i] = res
    return out


def energy_record(rec: StructureRecord, res: RelaxResult, mu: dict[str, float], hull: ReferenceHull | None) -> dict:
    """One flat record: relaxation outcome, E_f and E_hull (eV/atom)."""
    s = rec.structure
    row = {
        "id": rec.id,
        "formula": s.composition.reduced_formula if s is not None else None,
        "target": rec.metadata.get("target_id") or rec.metadata.get("target"),
        "n_atoms": len(s) if s is not None else None,
        **res.as_dict(),
        "e_form_per_atom": None,
        "e_hull": None,
    }
    final = res.final_structure
    if final is None or res.e_final_per_atom is None:
        return row
    try:
        ef = formation_energy_per_atom(final.composition, res.e_final_per_atom, mu)
    except ValueError as exc:
        row["error"] = str(exc)
        return row
    row["e_form_per_atom"] = ef
    if hull is not None:
        row["e_hull"] = hull.e_hull(final.composition, ef)
    return row


def summarize_records(records: Sequence[dict], prefix: str = "") -> dict:
    """Flat summary of energy records: convergence, E_f, E_hull statistics over converged structures."""
    conv = [r for r in records if r.get("converged")]
    ef = np.array([r["e_form_per_atom"] for r in conv if r.get("e_form_per_atom") is not None], dtype=float)
    rmsd = np.array([r["rmsd"] for r in records if r.get("rmsd") is not None], dtype=float)
    steps = np.array([r["n_steps"] for r in records if r.get("n_steps") is not None], dtype=float)
    m = {
        "n_structures": len(records),
        "n_relaxed": int(sum(r.get("e_final_per_atom") is not None for r in records)),
        "n_converged": len(conv),
        "converged_fraction": len(conv) / len(records) if records else None,
        "mean_e_form_per_atom": float(ef.mean()) if len(ef) else None,
        "median_e_form_per_atom": float(np.median(ef)) if len(ef) else None,
        "mean_rmsd": float(rmsd.mean()) if len(rmsd) else None,
        "mean_relax_steps": float(steps.mean()) if len(steps) else None,
    }
    m.update(stability_counts([r.get("e_hull") for r in conv]))
    key = "target" if any(r.get("target") for r in records) else "formula"
    cr = convergence_rate(records, key)
    m["composition_key"] = key
    m["n_compositions"] = cr["n_compositions"]
    m["composition_convergence_rate"] = cr["convergence_rate"]
    return {prefix + k: v for k, v in m.items()}


def load_energy_records(path: str | Path) -> list[dict]:
    """Records written by ``evaluate_energy`` / ``unimat evaluate energy`` (JSON lines)."""
    p = Path(path)
    rows = []
    with open(p) as fh:
        for i, line in enumerate(fh):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{p}: line {i + 1} is not JSON ({exc})") from None
    return rows


def write_energy_records(records: Sequence[dict], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    return p


def dft_records(csv_path: str | Path, hull: ReferenceHull | None = None, limit: int | None = None) -> list[dict]:
    """Energy records of an MP-20 CSV straight from its DFT columns (no relaxation; ``converged`` True),
    to compare generated sets with the test set's own formation energies. ``e_hull`` is computed against
    ``hull`` when given, else MP's ``e_above_hull`` column (identical for the default MP-20 hull)."""
    from unimat_dist.datasets import iter_cdvae_csv

    rows = []
    for rec in iter_cdvae_csv(csv_path):
        if limit is not None and len(rows) >= limit:
            break
        ef = rec.properties.get("formation_energy_per_atom")
        if ef is None:
            raise ValueError(f"{csv_path}: row {rec.id} has no formation_energy_per_atom")
        formula = rec.metadata.get("pretty_formula")
        if not formula:
            from unimat_dist.datasets import structure_from_cif

            formula = structure_from_cif(rec.cif, rec.id).composition.reduced_formula
        from pymatgen.core import Composition

        formula = Composition(formula).reduced_formula
        rows.append({"id": rec.id, "formula": formula, "target": None, "converged": True, "e_form_per_atom": ef,
                     "e_hull": hull.e_hull(formula, ef) if hull is not None else rec.properties.get("e_above_hull"),
                     "source": "dft"})
    return rows


def evaluate_energy(
    generated: str | Path | Sequence[StructureRecord],
    steps: int = DEFAULT_STEPS,
    fmax: float = DEFAULT_FMAX,
    hull: ReferenceHull | None = None,
    train: str | Path | Sequence[StructureRecord] | None = None,
    novelty: bool = True,
    sun_thresholds: Sequence[float] = (0.0, 0.1),
    compare: Sequence[dict] | None = None,
    compare_label: str = "reference",
    compare_key: str | None = None,
    workers: int | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> EnergyResult:
    """Relax, score and summarise a generated set.

    Args:
        generated: folder of CIFs, extxyz, CDVAE CSV, ``NAME:SPLIT`` or StructureRecords.
        steps, fmax: relaxation bound and force criterion (eV/A).
        hull: reference hull (default ``ReferenceHull.from_mp20()``: bundled MP-20 hull points).
        train: training set for the S.U.N. novelty check (default: none -> S.U.N. not computed unless
            ``novelty`` and a dataset train split is given).
        compare: energy records of a second set (e.g. a baseline, or ``dft_records(test.csv)``);
            adds ``vs_<label>_*`` metrics (Delta E_f, reduction rate, convergence rates).
        compare_key: "formula" or "target" (default: "target" when the records carry targets).
    """
    from .elemental_refs import load_elemental_references
    from .sources import resolve_source
    from .structures_io import load_structures

    t0 = time.time()
    if isinstance(generated, (str, Path)):
        path, note = resolve_source(generated)
        recs = load_structures(path, limit=limit)
    else:
        recs, note = list(generated)[: limit if limit is not None else None], "in-memory records"
    if not recs:
        raise ValueError(f"{note}: no structures")
    hull = hull if hull is not None else ReferenceHull.from_mp20()
    mu = load_elemental_references()
    results = relax_records(recs, steps=steps, fmax=fmax, workers=workers, progress=progress)
    records = [energy_record(r, res, mu, hull) for r, res in zip(recs, results)]
    relaxed = [res.final_structure for res in results]
    m = {"generated_source": note, "relax_steps": steps, "relax_fmax": fmax, "potential": "CHGNet 0.3.0",
         "energy_convention": "CHGNet energies (MP2020-compatible scale); E_f vs CHGNet elemental refs; "
                               "E_hull = E_f - hull(E_f), negative below the reference hull",
         "hull_reference": hull.note, "n_hull_points": len(hull)}
    m.update(summarize_records(records))
    if novelty and train is not None:
        m.update(_sun_metrics(recs, records, relaxed, train, sun_thresholds, progress))
    if compare is not None:
        key = compare_key or ("target" if any(r.get("target") for r in records) else "formula")
        cmp = compare_sets(records, compare, key=key)
        cmp.pop("per_composition")
        m.update({f"vs_{compare_label}_{k}": v for k, v in cmp.items()})
        m[f"vs_{compare_label}_key"] = key
    m["wall_seconds"] = round(time.time() - t0, 2)
    return EnergyResult(m, records, relaxed)


def _sun_metrics(recs, records, relaxed, train, thresholds, progress) -> dict:
    from .sources import resolve_source
    from .structures_io import load_structures
    from .uniqueness import novelty_flags, uniqueness_metrics

    structs = [f if f is not None else r.structure for f, r in zip(relaxed, recs)]
    idx = [i for i, s in enumerate(structs) if s is not None]
    if isinstance(train, (str, Path)):
        tpath, tnote = resolve_source(train)
        train_structs = [t.structure for t in load_structures(tpath) if t.structure is not None]
    else:
        tnote = "in-memory records"
        train_structs = [t.structure for t in train if t.structure is not None]
    u = uniqueness_metrics([structs[i] for i in idx])
    nov = novelty_flags([structs[i] for i in idx], train_structs, progress=progress)
    rep = [False] * len(structs)
    novel = [False] * len(structs)
    for k, i in enumerate(idx):
        rep[i], novel[i] = u["is_unique_representative"][k], nov[k]
    out = {"unique_fraction": u["unique_fraction"], "novelty": float(np.mean(nov)) if nov else None,
           "sun_train_source": tnote}
    for t in thresholds:
        s = sun_rate([r.get("e_hull") for r in records], rep, novel, threshold=t,
                     converged=[bool(r.get("converged")) for r in records])
        out[f"sun_rate_e_hull_lt_{t:g}"] = s["sun_rate"]
        out[f"n_sun_e_hull_lt_{t:g}"] = s["n_sun"]
    return out
