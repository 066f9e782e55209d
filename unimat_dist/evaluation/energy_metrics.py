"""The paper's energy metrics over per-structure energy records (plain dicts, see ``energy.py``):

* per-composition ``Delta E_f(A, B) = min E_f(A, c) - min E_f(B, c)`` over the converged structures of each
  set with composition ``c`` (reduced formula), for the compositions both sets have; the **E_f reduction
  rate** is the fraction of those compositions where A is lower (Delta < 0), as in the paper's comparison
  of UniMat with CDVAE (Fig. 5) and with AIRSS (Fig. 8);
* the **convergence rate** of a set: fraction of its compositions with at least one converged
  relaxation (the paper's conditional-generation comparison with AIRSS);
* ``#stable`` (E_hull < 0), ``#metastable`` (E_hull < 0.025 eV/atom) over converged structures;
* the MatterGen-style **S.U.N. rate**: fraction of all generated structures that are stable
  (E_hull < threshold), unique (the first of their StructureMatcher group) and novel (no match in the
  training set); reported for the thresholds given (default 0 and 0.1 eV/atom).

All energies are eV/atom.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np

METASTABLE = 0.025  # eV/atom


def _key(r: dict, key: str) -> str | None:
    return r.get(key) or r.get("formula")


def best_by_composition(records: Iterable[dict], key: str = "formula", converged_only: bool = True) -> dict[str, float]:
    """Lowest E_f per composition over (converged) records with a formation energy."""
    best: dict[str, float] = {}
    for r in records:
        ef = r.get("e_form_per_atom")
        if ef is None or (converged_only and not r.get("converged", False)):
            continue
        k = _key(r, key)
        if k is not None and (k not in best or ef < best[k]):
            best[k] = float(ef)
    return best


def convergence_rate(records: Sequence[dict], key: str = "formula") -> dict:
    """Fraction of compositions with >= 1 converged relaxation, and the raw counts."""
    comps: dict[str, bool] = defaultdict(bool)
    for r in records:
        k = _key(r, key)
        if k is not None:
            comps[k] |= bool(r.get("converged", False))
    n = len(comps)
    n_conv = sum(comps.values())
    return {"n_compositions": n, "n_compositions_converged": n_conv,
            "convergence_rate": n_conv / n if n else None,
            "n_structures": len(records), "n_converged": int(sum(bool(r.get("converged")) for r in records))}


def compare_sets(a: Sequence[dict], b: Sequence[dict], key: str = "formula", converged_only: bool = True) -> dict:
    """Per-composition Delta E_f(A, B) and the E_f reduction rate of A relative to B.

    Returns a flat summary plus ``per_composition``: a list of {composition, ef_a, ef_b, delta} sorted by
    delta (for the paper-style bar plot).
    """
    best_a = best_by_composition(a, key, converged_only)
    best_b = best_by_composition(b, key, converged_only)
    common = sorted(set(best_a) & set(best_b))
    rows = [{"composition": c, "ef_a": best_a[c], "ef_b": best_b[c], "delta": best_a[c] - best_b[c]} for c in common]
    rows.sort(key=lambda r: r["delta"])
    deltas = np.array([r["delta"] for r in rows], dtype=float)
    ca, cb = convergence_rate(a, key), convergence_rate(b, key)
    return {
        "n_compositions_a": ca["n_compositions"],
        "n_compositions_b": cb["n_compositions"],
        "convergence_rate_a": ca["convergence_rate"],
        "convergence_rate_b": cb["convergence_rate"],
        "n_common_compositions": len(rows),
        "ef_reduction_rate": float(np.mean(deltas < 0)) if len(rows) else None,
        "mean_delta_ef": float(deltas.mean()) if len(rows) else None,
        "median_delta_ef": float(np.median(deltas)) if len(rows) else None,
        "per_composition": rows,
    }


def stability_counts(e_hulls: Sequence[float | None], thresholds: Sequence[float] = (0.0, METASTABLE)) -> dict:
    """``n_stable`` (E_hull < 0), ``n_metastable`` (E_hull < 25 meV/atom) and fractions over the values
    given (callers pass converged structures only); None values are skipped."""
    vals = np.array([x for x in e_hulls if x is not None and np.isfinite(x)], dtype=float)
    n = len(vals)
    out = {"n_with_e_hull": n,
           "n_stable": int(np.sum(vals < 0.0)),
           "n_metastable": int(np.sum(vals < METASTABLE)),
           "stable_fraction": float(np.mean(vals < 0.0)) if n else None,
           "metastable_fraction": float(np.mean(vals < METASTABLE)) if n else None,
           "mean_e_hull": float(vals.mean()) if n else None,
           "median_e_hull": float(np.median(vals)) if n else None}
    for t in thresholds:
        if t not in (0.0, METASTABLE):
            out[f"n_e_hull_below_{t:g}"] = int(np.sum(vals < t))
    return out


def sun_rate(e_hulls: Sequence[float | None], unique_rep: Sequence[bool], novel: Sequence[bool],
             threshold: float = 0.0, converged: Sequence[bool] | None = None) -> dict:
    """S.U.N. = stable (E_hull < threshold, converged) & unique representative & novel, over all N."""
    n = len(e_hulls)
    if not (len(unique_rep) == len(novel) == n):
        raise ValueError("e_hulls, unique_rep and novel must have the same length")
    conv = converged if converged is not None else [True] * n
    flags = [(e is not None and e < threshold and c and u and nv) for e, u, nv, c in zip(e_hulls, unique_rep, novel, conv)]
    return {"sun_threshold_ev": threshold, "n_sun": int(sum(flags)), "sun_rate": (sum(flags) / n) if n else None}
