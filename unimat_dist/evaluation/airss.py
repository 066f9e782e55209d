"""AIRSS-like random structure search, the baseline of the paper's conditional-generation comparison.

For a composition: pick a random space group compatible with the atom counts, place atoms on random
Wyckoff positions with pyxtal, scale the cell isotropically to a random volume in
``volume_range`` x pyxtal's atomic-radii volume estimate (default 0.4-1.2), push overlapping atoms apart
with a soft-sphere potential (or a few CHGNet steps), then hand the structures to the same CHGNet
relaxation/energy pipeline as generated samples (``energy.relax_records``).

Everything is seeded: the same (composition, index, seed) always gives the same start structure.
"""
from __future__ import annotations

import logging
import warnings
from typing import Sequence

import numpy as np

from .structures_io import StructureRecord

log = logging.getLogger(__name__)

VOLUME_RANGE = (0.4, 1.2)
MAX_TRIES = 60


def parse_composition(text: str) -> dict[str, int]:
    """``"Li4O2"`` -> ``{"Li": 4, "O": 2}`` (the cell content; integer counts required)."""
    from pymatgen.core import Composition

    try:
        comp = Composition(text)
    except Exception as exc:
        raise ValueError(f"composition {text!r}: {exc}") from None
    counts = {el.symbol: amt for el, amt in comp.items()}
    if not counts or any(abs(a - round(a)) > 1e-8 or a <= 0 for a in counts.values()):
        raise ValueError(f"composition {text!r}: atom counts must be positive integers")
    return {k: int(round(v)) for k, v in counts.items()}


def random_symmetric_structure(counts: dict[str, int], rng: np.random.Generator, volume_factor: float = 1.0,
                               max_tries: int = MAX_TRIES):
    """One random symmetric structure with exactly these atom counts, or None if pyxtal found none."""
    from pyxtal import pyxtal

    species, nums = list(counts), [counts[s] for s in counts]
    for _ in range(max_tries):
        sg = int(rng.integers(1, 231))
        crystal = pyxtal()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                crystal.from_random(3, sg, species, nums, factor=1.0, random_state=int(rng.integers(0, 2**31 - 1)))
        except Exception:  # incompatible group or failed placement: draw another group
            continue
        if not crystal.valid:
            continue
        s = crystal.to_pymatgen()
        if volume_factor != 1.0:
            s.scale_lattice(s.volume * volume_factor)
        s.properties = {}
        return s
    return None


def generate_random_structures(
    compositions: Sequence[str],
    n_per_composition: int = 100,
    seed: int = 0,
    volume_range: tuple[float, float] = VOLUME_RANGE,
    prerelax: str = "soft_sphere",
    prerelax_steps: int = 200,
    workers: int | None = 1,
    progress: bool = False,
) -> list[StructureRecord]:
    """Random start structures, ``n_per_composition`` per composition, pre-relaxed.

    Record ids are ``<formula>__<k>``; ``metadata`` holds ``target`` (the composition string), the space
    group and volume factor used.
    """
    if prerelax not in ("soft_sphere", "chgnet", "none"):
        raise ValueError(f"prerelax must be soft_sphere, chgnet or none, got {prerelax!r}")
    lo, hi = volume_range
    if not 0 < lo <= hi:
        raise ValueError(f"volume_range must satisfy 0 < low <= high, got {volume_range}")
    jobs = []
    for ci, comp_text in enumerate(compositions):
        counts = parse_composition(comp_text)
        jobs += [(comp_text, counts, [seed, ci, k], k, (lo, hi), prerelax, prerelax_steps)
                 for k in range(n_per_composition)]
    from unimat_dist.parallel import parallel_map

    # each structure is seeded by (seed, composition index, k): the same set whatever the worker count
    # (1,000 Perov-5 structures: 167 s on one process, the cost of the quickstart's random baseline)
    return parallel_map(_one_random_structure, jobs, workers=workers, desc="random structures",
                        progress=progress)


def _one_random_structure(job) -> StructureRecord:
    from pymatgen.core import Composition

    comp_text, counts, seed_seq, k, (lo, hi), prerelax, prerelax_steps = job
    key = Composition(counts).formula.replace(" ", "")
    rng = np.random.default_rng(seed_seq)
    vf = float(rng.uniform(lo, hi))
    s = random_symmetric_structure(counts, rng, volume_factor=vf)
    rid = f"{key}__{k}"
    meta = {"target": comp_text, "target_id": key, "volume_factor": vf}
    if s is None:
        return StructureRecord(rid, None, f"{rid}: pyxtal placed no structure", {}, meta)
    if prerelax == "soft_sphere":
        from .soft_sphere import soft_sphere_relax

        s = soft_sphere_relax(s, steps=prerelax_steps)
    elif prerelax == "chgnet":
        from .potential import relax

        res = relax(s, steps=min(prerelax_steps, 20), fmax=0.5)
        s = res.final_structure if res.final_structure is not None else s
    return StructureRecord(rid, s, None, {}, meta)
