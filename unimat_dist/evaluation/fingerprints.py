"""Per-crystal analysis for the proxy metrics: CDVAE's validity flags plus its two fingerprints.

* structure fingerprint: matminer ``CrystalNNFingerprint.from_preset("ops")`` of every site, averaged
  over sites (61 numbers);
* composition fingerprint: matminer ``ElementProperty.from_preset("magpie")`` (132 numbers), with
  ``impute_nan=False`` because matminer >= 0.9 imputes missing elemental data by default while
  CDVAE's matminer 0.7.3 returned NaN (later scaled to 0 by ``comp_scaler``).

``analyse_record`` mirrors ``Crystal.__init__`` of CDVAE's ``compute_metrics.py`` step by step; it is a
module-level function so that :func:`parallel.parallel_map` can ship it to worker processes.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from .structures_io import StructureRecord, canonical_structure
from .validity import MIN_VOLUME, composition_counts, smact_validity, structure_validity


@dataclass
class CrystalFeatures:
    """What the proxy metrics need from one crystal. ``valid`` is CDVAE's: composition valid, structure
    valid and both fingerprints computed."""

    id: str
    constructed: bool
    comp_valid: bool
    struct_valid: bool
    valid: bool
    formula: str | None = None  # reduced formula
    n_sites: int | None = None
    density: float | None = None  # g/cm^3
    n_elements: int | None = None
    struct_fp: np.ndarray | None = None
    comp_fp: np.ndarray | None = None
    invalid_reason: str | None = None
    properties: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    structure: Any | None = None  # canonical structure, kept only when asked (uniqueness/novelty/CSP)


@lru_cache(maxsize=1)
def _featurizers():
    from matminer.featurizers.composition.composite import ElementProperty
    from matminer.featurizers.site.fingerprint import CrystalNNFingerprint

    return CrystalNNFingerprint.from_preset("ops"), ElementProperty.from_preset("magpie", impute_nan=False)


def structure_fingerprint(structure) -> np.ndarray:
    """Site-averaged CrystalNN "ops" fingerprint (raises whatever CrystalNN raises)."""
    cnn, _ = _featurizers()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        site_fps = [cnn.featurize(structure, i) for i in range(len(structure))]
    return np.asarray(site_fps, dtype=float).mean(axis=0)


def composition_fingerprint(composition) -> np.ndarray:
    """Magpie ElementProperty fingerprint of a pymatgen Composition (NaN where data are missing)."""
    _, magpie = _featurizers()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(magpie.featurize(composition), dtype=float)


def analyse_record(
    record: StructureRecord,
    niggli: bool = False,
    fingerprints: bool = True,
    oxidation_set: str = "smact14",
    keep_structure: bool = False,
) -> CrystalFeatures:
    """Validity, fingerprints, density and #elements of one record, as CDVAE's ``Crystal`` computes them.

    ``niggli=True`` reproduces how CDVAE built *reference* crystals (``build_crystal(niggli=True)``);
    generated crystals were built straight from their lattice parameters (``niggli=False``).
    A crystal that cannot be built (unparseable, degenerate cell, volume < 0.1 A^3) is structurally
    invalid and gets no fingerprints; CDVAE would try CrystalNN on a < 0.1 A^3 cell, which can hang.
    """
    from pymatgen.core import Composition

    s0 = record.structure
    feats = CrystalFeatures(record.id, False, False, False, False, properties=dict(record.properties),
                            metadata=dict(record.metadata))
    if s0 is None:
        feats.invalid_reason = record.error or "no structure"
        return feats
    try:
        symbols = [site.specie.symbol for site in s0]
    except AttributeError:
        feats.invalid_reason = "disordered (partially occupied) structure"
        return feats
    elems, counts = composition_counts(symbols)
    comp = Composition({e: symbols.count(e) for e in elems})
    feats.formula = comp.reduced_formula
    feats.n_sites = len(symbols)
    feats.n_elements = len(elems)
    feats.comp_valid = smact_validity(elems, counts, oxidation_set=oxidation_set)
    try:
        s = canonical_structure(s0, niggli=niggli)
        feats.constructed = s.volume >= MIN_VOLUME
        if not feats.constructed:
            feats.invalid_reason = "unrealistically_small_lattice"
    except Exception as exc:  # degenerate cells make pymatgen raise many types
        feats.invalid_reason = f"construction_raises_exception: {exc}"
        return feats
    feats.density = float(s.density)
    if keep_structure:
        feats.structure = s
    if not feats.constructed:
        return feats
    feats.struct_valid = structure_validity(s)
    if not fingerprints:
        feats.valid = feats.comp_valid and feats.struct_valid
        return feats
    try:
        feats.struct_fp = structure_fingerprint(s)
        feats.comp_fp = composition_fingerprint(comp)
    except Exception as exc:  # CDVAE: "counts crystal as invalid if fingerprint cannot be constructed"
        feats.struct_fp = feats.comp_fp = None
        feats.invalid_reason = f"fingerprint_failed: {exc}"
        return feats
    feats.valid = feats.comp_valid and feats.struct_valid
    if not feats.valid:
        feats.invalid_reason = "comp_invalid" if not feats.comp_valid else "struct_invalid"
    return feats
