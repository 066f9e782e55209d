"""Earth mover's distances (1-D Wasserstein, ``scipy.stats.wasserstein_distance``) between the valid
generated crystals and the reference set, as in CDVAE's ``GenEval``.

CDVAE draws 1,000 valid generated crystals with an unseeded ``np.random.choice`` and raises when fewer
are valid. Here the draw is seeded (the seed is returned) and, with fewer than ``n_samples`` valid
crystals, all of them are used and the result says so.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def select_valid_samples(valid_indices: Sequence[int], n_samples: int = 1000, seed: int = 0) -> tuple[list[int], dict]:
    """Indices of the generated crystals the EMDs (and diversities) use, plus a provenance dict."""
    valid = list(valid_indices)
    info = {"emd_n_samples_requested": n_samples, "emd_n_valid_available": len(valid), "emd_seed": seed}
    if len(valid) >= n_samples:
        rng = np.random.default_rng(seed)
        chosen = sorted(rng.choice(len(valid), size=n_samples, replace=False).tolist())
        picked = [valid[i] for i in chosen]
        info.update(emd_n_valid_used=n_samples, emd_subsampled=len(valid) > n_samples,
                    emd_note=f"random subsample of {n_samples} of {len(valid)} valid generated crystals (seed {seed})")
    else:
        picked = valid
        info.update(emd_n_valid_used=len(valid), emd_subsampled=False,
                    emd_note=(f"only {len(valid)} valid generated crystals (< {n_samples}): all are used; "
                              "the CDVAE script would have raised here"))
    return picked, info


def emd(values_a: Sequence[float], values_b: Sequence[float]) -> float | None:
    """1-D Wasserstein distance, None if either side is empty."""
    from scipy.stats import wasserstein_distance

    a = [float(x) for x in values_a if x is not None and np.isfinite(x)]
    b = [float(x) for x in values_b if x is not None and np.isfinite(x)]
    if not a or not b:
        return None
    return float(wasserstein_distance(a, b))
