"""COV-R / COV-P (coverage recall / precision) exactly as CDVAE's ``compute_cov``.

A reference crystal is *recalled* when some generated crystal is within ``struct_cutoff`` of it in
structure-fingerprint distance **and** within ``comp_cutoff`` in scaled composition-fingerprint
distance (the nearest generated crystal in each space, taken separately, as CDVAE does). A generated
crystal is *precise* when the same holds towards the reference set. Generated crystals without
fingerprints are dropped from the distance matrices but, as in CDVAE, COV-P still divides by the number
of *all* generated crystals.
"""
from __future__ import annotations

import numpy as np

from .comp_scaler import scale_comp_fps

# CDVAE compute_metrics.py COV_Cutoffs
COV_CUTOFFS = {
    "mp20": {"struct": 0.4, "comp": 10.0},
    "carbon": {"struct": 0.2, "comp": 4.0},
    "perovskite": {"struct": 0.2, "comp": 4.0},
}

DATASET_ALIASES = {
    "mp20": "mp20", "mp_20": "mp20", "mp-20": "mp20", "mp_20_subset": "mp20",
    "perov5": "perovskite", "perov_5": "perovskite", "perov-5": "perovskite", "perovskite": "perovskite",
    "carbon24": "carbon", "carbon_24": "carbon", "carbon-24": "carbon", "carbon": "carbon",
}


def protocol_name(dataset: str) -> str:
    """CDVAE's evaluation name (``mp20``/``perovskite``/``carbon``) for any accepted dataset spelling."""
    try:
        return DATASET_ALIASES[dataset.lower()]
    except KeyError:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(DATASET_ALIASES)}") from None


def compute_cov(struct_fps, comp_fps, ref_struct_fps, ref_comp_fps, struct_cutoff: float, comp_cutoff: float,
                num_gen: int | None = None) -> dict:
    """CDVAE's coverage metrics.

    struct_fps/comp_fps: per generated crystal, an array or None (no fingerprint); ref_*: arrays for
    every reference crystal. Composition fingerprints are raw Magpie vectors (scaled here).
    Returns cov_recall, cov_precision (fractions) and the mean nearest-neighbour distances
    amsd_*/amcd_* (structure/composition).
    """
    from scipy.spatial.distance import cdist

    if num_gen is None:
        num_gen = len(struct_fps)
    keep = [i for i, (s, c) in enumerate(zip(struct_fps, comp_fps)) if s is not None and c is not None]
    ref_s = np.asarray(ref_struct_fps, dtype=float)
    ref_c = scale_comp_fps(ref_comp_fps)
    if not keep or len(ref_s) == 0:
        nan = float("nan")
        return {"cov_recall": 0.0, "cov_precision": 0.0, "amsd_recall": nan, "amsd_precision": nan,
                "amcd_recall": nan, "amcd_precision": nan}
    gen_s = np.asarray([struct_fps[i] for i in keep], dtype=float)
    gen_c = scale_comp_fps([comp_fps[i] for i in keep])
    struct_pdist = cdist(gen_s, ref_s)
    comp_pdist = cdist(gen_c, ref_c)
    struct_recall = struct_pdist.min(axis=0)
    struct_precision = struct_pdist.min(axis=1)
    comp_recall = comp_pdist.min(axis=0)
    comp_precision = comp_pdist.min(axis=1)
    cov_recall = np.mean((struct_recall <= struct_cutoff) & (comp_recall <= comp_cutoff))
    cov_precision = np.sum((struct_precision <= struct_cutoff) & (comp_precision <= comp_cutoff)) / num_gen
    return {
        "cov_recall": float(cov_recall),
        "cov_precision": float(cov_precision),
        "amsd_recall": float(struct_recall.mean()),
        "amsd_precision": float(struct_precision.mean()),
        "amcd_recall": float(comp_recall.mean()),
        "amcd_precision": float(comp_precision.mean()),
    }


def fingerprint_diversity(fps, scale_comp: bool = False) -> float | None:
    """CDVAE's ``get_fp_pdist``: mean pairwise Euclidean distance (comp_div / struct_div)."""
    from scipy.spatial.distance import pdist

    if len(fps) < 2:
        return None
    x = scale_comp_fps(fps) if scale_comp else np.asarray(fps, dtype=float)
    return float(pdist(x).mean())
