"""Crystal structure prediction metrics for composition-conditioned generation (CDVAE ``RecEval``,
DiffCSP ``RecEval``/``RecEvalBatch``).

Each reference (test) structure has up to k generated samples of its composition, linked by
``target_id`` (CIF files named ``<test_id>__<n>.cif``, an extxyz ``target_id`` key, or a CSV column).
With ``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)``:

* match rate: fraction of *all* reference structures for which at least one of the first k valid
  samples matches (a structure without samples counts as unmatched);
* RMSE: mean over matched references of the smallest normalised RMS displacement
  (pymatgen's ``get_rms_dist``: RMS / (V/N)^(1/3)).

Validity as in DiffCSP: for k = 1 the sample *and* the reference must be valid (CDVAE validity), for
k > 1 only the samples (``RecEvalBatch``).
"""
from __future__ import annotations

from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np

from .feature_cache import analyse_set
from unimat_dist.parallel import parallel_map
from .structures_io import StructureRecord

CSP_MATCHER = dict(stol=0.5, angle_tol=10.0, ltol=0.3)


def _rms_for_target(args, ks: tuple[int, ...]) -> dict[int, float | None]:
    """Best RMS among the first k valid samples of one target, for each k (None: no match)."""
    import warnings

    from pymatgen.analysis.structure_matcher import StructureMatcher

    gt, gt_valid, samples = args
    matcher = StructureMatcher(**CSP_MATCHER)
    rms_per_sample: list[float | None] = []
    for s, valid in samples[: max(ks)]:
        if s is None or not valid:
            rms_per_sample.append(None)
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = matcher.get_rms_dist(s, gt)
            rms_per_sample.append(None if r is None else float(r[0]))
        except Exception:  # as in CDVAE/DiffCSP: a failing comparison is no match
            rms_per_sample.append(None)
    out = {}
    for k in ks:
        if k == 1:
            first = rms_per_sample[:1]
            out[k] = first[0] if first and gt_valid else None
        else:
            found = [r for r in rms_per_sample[:k] if r is not None]
            out[k] = min(found) if found else None
    return out


def _target_of(g) -> str:
    """The reference id a sample belongs to: ``target_id`` (metadata, or a numeric CSV column), else its id."""
    t = g.metadata.get("target_id")
    if t is None and g.properties.get("target_id") is not None:
        v = g.properties["target_id"]
        t = str(int(v)) if float(v).is_integer() else str(v)
    return str(t if t is not None else g.id)


def evaluate_csp(
    generated: str | Path | Sequence[StructureRecord],
    reference: str | Path | Sequence[StructureRecord],
    ks: Sequence[int] = (1, 20),
    workers: int | None = None,
    limit_reference: int | None = None,
    progress: bool = True,
) -> dict:
    """``match_rate_at_{k}`` and ``rmse_at_{k}`` for each k, plus counts, as a flat dict."""
    from .proxy import _as_source

    ks = tuple(sorted(set(int(k) for k in ks)))
    gen_src, gen_note = _as_source(generated, "generated")
    ref_src, ref_note = _as_source(reference, "reference")
    gen, _ = analyse_set(gen_src, niggli=False, fingerprints=False, keep_structures=True, workers=workers,
                         progress=progress, use_cache=False, desc="csp samples")
    ref, _ = analyse_set(ref_src, niggli=True, fingerprints=False, keep_structures=True, limit=limit_reference,
                         workers=workers, progress=progress, desc="csp reference")
    by_target: dict[str, list] = defaultdict(list)
    for g in gen:
        by_target[_target_of(g)].append((g.structure, g.valid))
    unknown = set(by_target) - {r.id for r in ref}
    tasks = [(r.structure, r.valid, by_target.get(r.id, [])) for r in ref]
    rms = parallel_map(partial(_rms_for_target, ks=ks), tasks, workers=workers, desc="csp match", progress=progress,
                       min_parallel=16)
    m: dict = {"generated_source": gen_note, "reference_source": ref_note, "n_reference": len(ref),
               "n_generated": len(gen), "n_targets_with_samples": sum(1 for r in ref if by_target.get(r.id)),
               "n_samples_without_reference": sum(len(by_target[t]) for t in unknown),
               "matcher": "StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)"}
    for k in ks:
        vals = [x[k] for x in rms]
        matched = [v for v in vals if v is not None]
        m[f"match_rate_at_{k}"] = len(matched) / len(ref) if ref else None
        m[f"rmse_at_{k}"] = float(np.mean(matched)) if matched else None
        m[f"max_samples_at_{k}"] = k
    return m
