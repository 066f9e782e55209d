"""The CDVAE proxy metrics of a generated set against a reference (test) set, as one flat dict.

    from unimat_dist.evaluation import evaluate_proxy
    metrics = evaluate_proxy("samples/", "perov_5:test", dataset="perov5")

Protocol (txie-93/cdvae ``scripts/compute_metrics.py``, ``GenEval``): validity fractions over *all*
generated crystals; COV over all generated crystals with fingerprints (COV-P divided by all generated);
EMDs and diversities over (up to) 1,000 valid generated crystals against the *whole* reference set.
Every fraction is in [0, 1] (the papers print percentages). See ``docs/evaluation.md``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .coverage import COV_CUTOFFS, compute_cov, fingerprint_diversity, protocol_name
from .emd import emd, select_valid_samples
from .feature_cache import analyse_set
from .fingerprints import CrystalFeatures
from .sources import default_train_source, resolve_source
from .structures_io import StructureRecord

log = logging.getLogger(__name__)


@dataclass
class ProxyResult:
    metrics: dict
    generated: list[CrystalFeatures]
    reference: list[CrystalFeatures]
    emd_indices: list[int] = field(default_factory=list)  # generated crystals used by the EMDs
    properties: dict = field(default_factory=dict)  # property EMD inputs, when computed


def _as_source(x, what: str):
    if isinstance(x, (str, Path)):
        path, note = resolve_source(x)
        return path, note
    return list(x), f"{len(x)} in-memory {what} records"


def proxy_evaluation(
    generated: str | Path | Sequence[StructureRecord],
    reference: str | Path | Sequence[StructureRecord],
    dataset: str,
    train: str | Path | Sequence[StructureRecord] | None = None,
    n_samples: int = 1000,
    seed: int = 0,
    workers: int | None = None,
    niggli_generated: bool = False,
    niggli_reference: bool = True,
    oxidation_set: str = "smact14",
    uniqueness: bool = True,
    novelty: bool = True,
    property_fn: Callable[[list], list] | None = None,
    property_name: str | None = None,
    limit_generated: int | None = None,
    limit_reference: int | None = None,
    limit_train: int | None = None,
    use_cache: bool = True,
    cache_generated: bool = False,
    progress: bool = True,
) -> ProxyResult:
    """Compute the proxy metrics; see :func:`evaluate_proxy` for the arguments."""
    t0 = time.time()
    proto = protocol_name(dataset)
    cut = COV_CUTOFFS[proto]
    gen_src, gen_note = _as_source(generated, "generated")
    ref_src, ref_note = _as_source(reference, "reference")
    keep = uniqueness or novelty or property_fn is not None
    gen, gen_info = analyse_set(gen_src, niggli=niggli_generated, oxidation_set=oxidation_set, keep_structures=keep,
                                limit=limit_generated, workers=workers, progress=progress,
                                use_cache=use_cache and cache_generated, desc="generated")
    ref, ref_info = analyse_set(ref_src, niggli=niggli_reference, oxidation_set=oxidation_set,
                                keep_structures=property_fn is not None, limit=limit_reference, workers=workers,
                                progress=progress, use_cache=use_cache, desc="reference")
    if not gen:
        raise ValueError(f"{gen_note}: no generated structures")
    if not ref:
        raise ValueError(f"{ref_note}: no reference structures")
    n_gen = len(gen)
    ref_ok = [r for r in ref if r.struct_fp is not None and r.comp_fp is not None]
    m: dict = {
        "dataset": dataset,
        "protocol": f"cdvae:{proto}",
        "units": "fractions in [0, 1] (multiply by 100 for the papers' percentages); density EMD in g/cm^3",
        "generated_source": gen_note,
        "reference_source": ref_note,
        "n_generated": n_gen,
        "n_reference": len(ref),
        "n_reference_without_fingerprint": len(ref) - len(ref_ok),
        "n_constructed": int(sum(g.constructed for g in gen)),
        "struct_validity": float(np.mean([g.struct_valid for g in gen])),
        "comp_validity": float(np.mean([g.comp_valid for g in gen])),
        "validity": float(np.mean([g.valid for g in gen])),
        "n_valid": int(sum(g.valid for g in gen)),
        "smact_oxidation_set": oxidation_set,
        "niggli_generated": niggli_generated,
        "niggli_reference": niggli_reference,
    }
    # Coverage: every generated crystal counts in COV-P's denominator, reference crystals need fingerprints.
    m.update(compute_cov([g.struct_fp for g in gen], [g.comp_fp for g in gen],
                         [r.struct_fp for r in ref_ok], [r.comp_fp for r in ref_ok],
                         cut["struct"], cut["comp"], num_gen=n_gen))
    m["cov_struct_cutoff"], m["cov_comp_cutoff"] = cut["struct"], cut["comp"]
    # EMDs and diversities on the (sub)sample of valid generated crystals against the whole reference set.
    valid_idx = [i for i, g in enumerate(gen) if g.valid]
    picked, info = select_valid_samples(valid_idx, n_samples, seed)
    m.update(info)
    sample = [gen[i] for i in picked]
    m["emd_density"] = emd([g.density for g in sample], [r.density for r in ref])
    m["emd_num_elements"] = emd([g.n_elements for g in sample], [r.n_elements for r in ref])
    m["comp_div"] = fingerprint_diversity([g.comp_fp for g in sample], scale_comp=True)
    m["struct_div"] = fingerprint_diversity([g.struct_fp for g in sample])
    props: dict = {}
    if property_fn is not None:
        gen_props = property_fn([g.structure for g in sample])
        ref_props = _reference_property(ref, ref_info, property_fn, property_name, use_cache)
        m["emd_property"] = emd(gen_props, ref_props)
        m["emd_property_name"] = property_name
        props = {"generated": gen_props, "reference": ref_props, "name": property_name}
    else:
        m["emd_property"] = None
        m["emd_property_name"] = None
    if uniqueness or novelty:
        _add_uniqueness_novelty(m, gen, train, dataset, uniqueness, novelty, limit_train, workers, use_cache, progress)
    m["reference_cache_hit"] = ref_info.get("cache_hit", False)
    m["reference_shipped"] = ref_info.get("shipped", False)  # read from the fingerprints shipped with the package
    m["reference_sha256"] = ref_info.get("sha256")
    m["wall_seconds"] = round(time.time() - t0, 2)
    m.update(_versions())
    return ProxyResult(m, gen, ref, picked, props)


def _reference_property(ref, ref_info, property_fn, property_name, use_cache) -> list:
    """Property values of the reference set, cached next to its fingerprints (keyed by file + property)."""
    import hashlib
    import json

    from .feature_cache import cache_root, dump_json, refuse_pickle

    structs = [r.structure for r in ref if r.structure is not None]
    if not (use_cache and ref_info.get("sha256")):
        return property_fn(structs)
    key = hashlib.sha256(f"{ref_info['cache_file']}|{property_name}|{len(structs)}".encode()).hexdigest()[:32]
    # JSON, never pickle: the cache folder may be shared (see feature_cache); a float list needs no more.
    path = cache_root() / "properties" / f"{key}.json"
    refuse_pickle(path.with_suffix(".pkl"))
    if path.exists():
        try:
            values = json.loads(path.read_text())
            if isinstance(values, list) and len(values) == len(structs) and all(
                    v is None or isinstance(v, (int, float)) for v in values):
                return values
            raise ValueError("not a list of one number per structure")
        except ValueError as exc:
            log.warning("%s: ignoring unreadable property cache (%s); recomputing", path, exc)
    values = property_fn(structs)
    try:
        dump_json(list(values), path)
    except (TypeError, ValueError) as exc:
        log.warning("%s: not cached (%s)", path, exc)
    return values


def _add_uniqueness_novelty(m, gen, train, dataset, uniqueness, novelty, limit_train, workers, use_cache, progress):
    from .uniqueness import novelty_flags, uniqueness_metrics

    built = [g for g in gen if g.structure is not None and g.constructed]
    m["n_matchable"] = len(built)
    structs = [g.structure for g in built]
    if uniqueness:
        u = uniqueness_metrics(structs)
        m["unique_fraction"] = u["unique_fraction"]
        m["uniqueness_matbench"] = u["uniqueness_matbench"]
        m["n_unique"] = u["n_unique"]
    if novelty:
        if train is None:
            found = default_train_source(dataset)
            if found is None:
                m["novelty"] = None
                m["novelty_note"] = "no training set available"
                return
            train_src, train_note = found[0], found[1]
        else:
            train_src, train_note = _as_source(train, "training")
        tr, _ = analyse_set(train_src, niggli=True, fingerprints=False, keep_structures=True, limit=limit_train,
                            workers=workers, progress=progress, use_cache=use_cache, desc="train")
        flags = novelty_flags(structs, [t.structure for t in tr if t.structure is not None], progress=progress)
        m["novelty"] = float(np.mean(flags)) if flags else None
        m["n_novel"] = int(sum(flags))
        m["train_source"] = train_note
        m["n_train"] = len(tr)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("pymatgen", "matminer", "smact", "scipy"):
        try:
            out[f"version_{pkg}"] = version(pkg)
        except PackageNotFoundError:  # pragma: no cover
            out[f"version_{pkg}"] = None
    return out


def evaluate_proxy(
    generated: str | Path | Sequence[StructureRecord],
    reference: str | Path | Sequence[StructureRecord],
    dataset: str,
    **kwargs,
) -> dict:
    """CDVAE proxy metrics as a flat dict.

    Args:
        generated: folder of CIFs, extxyz file, CDVAE CSV, ``NAME:SPLIT`` or a list of StructureRecord.
        reference: the same kinds; usually the test split (``perov_5:test``).
        dataset: mp20 | perov5 | carbon24 (or the registry spellings): picks CDVAE's COV cut-offs.
        train: training set for novelty (default: the data set's train split or its documented stand-in).
        n_samples, seed: size and seed of the valid-sample draw for the EMDs (CDVAE: 1000, unseeded).
        workers: processes for fingerprinting (default: all CPUs).
        oxidation_set: "smact14" reproduces smact 2.2.1 (published tables), "icsd24" smact 4.x.
        uniqueness, novelty: StructureMatcher metrics (can be slow for large single-composition sets).
        property_fn: structures -> property values for the property EMD (see ``property_emd``).
        limit_*: keep the first N structures of a set (CI subsamples).
        use_cache: read/write the on-disk cache of analysed reference (and training) sets;
        cache_generated: cache the generated set too (useful when a file is evaluated repeatedly).
    """
    return proxy_evaluation(generated, reference, dataset, **kwargs).metrics
