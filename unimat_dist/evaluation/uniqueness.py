"""Uniqueness and novelty with pymatgen's StructureMatcher (the matbench-genmetrics settings
``stol=0.5, ltol=0.3, angle_tol=10``).

Each structure is reduced once (primitive cell, then Niggli) and compared only with structures of the
same reduced formula and the same number of primitive sites: with ``attempt_supercell=False`` and
``allow_subset=False`` (the defaults) structures outside that bucket can never match, so the bucketing
changes no answer and removes almost all of the quadratic cost.

* ``unique_fraction``: number of groups of mutually matching generated structures / N (DiffCSP- and
  MatterGen-style "uniqueness"); groups are formed greedily as in ``StructureMatcher.group_structures``.
* ``uniqueness_matbench``: 1 - duplicity rate, the matbench-genmetrics definition: ordered pairs (i != j)
  that match / (N^2 - N); counted from the groups, i.e. exact when matching is transitive.
* ``novelty``: fraction of generated structures that match no structure of the training set.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

MATCHER_KW = dict(stol=0.5, ltol=0.3, angle_tol=10.0)


def make_matcher(**overrides):
    from pymatgen.analysis.structure_matcher import StructureMatcher

    kw = dict(MATCHER_KW)
    kw.update(overrides)
    return StructureMatcher(**kw)


def reduce_structures(structures: Sequence, matcher=None) -> list:
    """Primitive + Niggli reduced copies, as StructureMatcher would compute them inside ``fit``."""
    import warnings

    matcher = matcher or make_matcher()
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s in structures:
            try:
                out.append(matcher._get_reduced_structure(s, matcher._primitive_cell, niggli=True))
            except Exception:  # a degenerate cell cannot be reduced: keep it, it will match nothing
                out.append(s)
    return out


def _bucket_key(s) -> tuple[str, int]:
    return (s.composition.reduced_formula, len(s))


def _fit(matcher, a, b) -> bool:
    try:
        return bool(matcher.fit(a, b, skip_structure_reduction=True))
    except Exception:  # pymatgen raises on pathological lattices; such pairs do not match
        return False


def group_indices(structures: Sequence, matcher=None, reduced: Sequence | None = None) -> list[list[int]]:
    """Greedy groups (lists of indices) of mutually matching structures, first index = representative."""
    matcher = matcher or make_matcher()
    red = list(reduced) if reduced is not None else reduce_structures(structures, matcher)
    buckets: dict[tuple, list[int]] = defaultdict(list)
    for i, s in enumerate(red):
        buckets[_bucket_key(s)].append(i)
    groups = []
    for idx in buckets.values():
        unmatched = list(idx)
        while unmatched:
            ref = unmatched.pop(0)
            members = [ref] + [j for j in unmatched if _fit(matcher, red[ref], red[j])]
            unmatched = [j for j in unmatched if j not in members]
            groups.append(members)
    groups.sort(key=lambda g: g[0])
    return groups


def uniqueness_metrics(structures: Sequence, matcher=None) -> dict:
    """unique_fraction, uniqueness_matbench, n_unique, n over ``structures``; also the representative flag
    per structure (``is_unique_representative``) used by the S.U.N. rate."""
    n = len(structures)
    if n == 0:
        return {"n": 0, "n_unique": 0, "unique_fraction": None, "uniqueness_matbench": None,
                "is_unique_representative": []}
    groups = group_indices(structures, matcher)
    rep = [False] * n
    for g in groups:
        rep[g[0]] = True
    dup_pairs = sum(len(g) * (len(g) - 1) for g in groups)
    return {
        "n": n,
        "n_unique": len(groups),
        "unique_fraction": len(groups) / n,
        "uniqueness_matbench": 1.0 - dup_pairs / (n * n - n) if n > 1 else 1.0,
        "is_unique_representative": rep,
    }


def novelty_flags(structures: Sequence, reference: Sequence, matcher=None, reference_reduced: Sequence | None = None,
                  progress: bool = False) -> list[bool]:
    """True for each structure that matches no reference structure."""
    from tqdm.auto import tqdm

    matcher = matcher or make_matcher()
    red = reduce_structures(structures, matcher)
    ref = list(reference_reduced) if reference_reduced is not None else reduce_structures(reference, matcher)
    buckets: dict[tuple, list] = defaultdict(list)
    for s in ref:
        buckets[_bucket_key(s)].append(s)
    flags = []
    for s in tqdm(red, desc="novelty", disable=not progress, mininterval=2.0):
        flags.append(not any(_fit(matcher, s, r) for r in buckets.get(_bucket_key(s), ())))
    return flags
