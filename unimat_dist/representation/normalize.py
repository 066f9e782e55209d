"""Map UniMat tensors to the model's value range and back, with a robust rule for noisy model output.

Model space (what the diffusion model sees and predicts):

* positions, fractional: atoms keep their coordinates in [0, 1), absent atoms sit at -1 (the paper's
  null location). Cartesian: atoms map to ``0.5 + x / (2 * cartesian_scale)`` (inside [0, 1] for
  |x| <= scale), absent atoms at -1. Either way the null value stays apart from every atom.
* lattice, fractional: ``(log a, log b, log c, alpha, beta, gamma)`` standardised with the data set's
  mean/std (``LatticeStats``). Cartesian: the 9 matrix entries standardised the same way.

Decoding rule for model output (``positions_from_model``): a slot is an atom iff the mean of its three
coordinates is > -0.5 (halfway between null and the atom range); fractional coordinates are wrapped
into [0, 1); atoms predicted in cells that hold no element of the system are dropped; lattice lengths
are clipped to [1, 100] Angstrom and angles to [20, 160] degrees, and impossible angle triples are
pulled towards 90 degrees (``lattice.clip_params``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ._xp import namespace
from .codec import UniMatTensor, decode, infer_mask
from .lattice import clip_params, matrix_to_params, params_to_matrix
from .spec import NULL_VALUE, UniMatSpec

MASK_THRESHOLD = -0.5

# Typical crystal lattices (used until a data set's statistics are fitted): lengths ~ 3-15 Angstrom.
_DEFAULT_FRAC_MEAN = (1.8, 1.8, 1.8, 90.0, 90.0, 90.0)
_DEFAULT_FRAC_STD = (0.5, 0.5, 0.5, 20.0, 20.0, 20.0)


def _lattice_features(lattice, coords: str):
    """Fractional: (a, b, c, al, be, ga) -> (log a, log b, log c, al, be, ga). Cartesian: identity."""
    if coords == "cartesian":
        return lattice
    xp = namespace(lattice)
    return xp.concatenate([xp.log(lattice[..., :3]), lattice[..., 3:]], -1)


@dataclass
class LatticeStats:
    """Streaming mean/std of lattice features; mergeable across workers (ingestion shards)."""

    coords: str = "fractional"
    count: int = 0
    total: list[float] = field(default_factory=list)
    total_sq: list[float] = field(default_factory=list)

    def update(self, lattices: np.ndarray) -> None:
        feats = np.asarray(_lattice_features(np.asarray(lattices, dtype=np.float64).reshape(-1, self._dim), self.coords))
        if not self.total:
            self.total = [0.0] * self._dim
            self.total_sq = [0.0] * self._dim
        self.count += feats.shape[0]
        self.total = (np.asarray(self.total) + feats.sum(0)).tolist()
        self.total_sq = (np.asarray(self.total_sq) + (feats**2).sum(0)).tolist()

    def merge(self, other: "LatticeStats") -> "LatticeStats":
        if other.count == 0:
            return self
        if self.count == 0:
            return LatticeStats(other.coords, other.count, list(other.total), list(other.total_sq))
        return LatticeStats(
            self.coords,
            self.count + other.count,
            (np.asarray(self.total) + other.total).tolist(),
            (np.asarray(self.total_sq) + other.total_sq).tolist(),
        )

    @property
    def _dim(self) -> int:
        return 6 if self.coords == "fractional" else 9

    def mean_std(self, min_std: float = 1e-2) -> tuple[list[float], list[float]]:
        if self.count == 0:
            raise ValueError("no lattices seen: cannot compute normalisation statistics")
        mean = np.asarray(self.total) / self.count
        var = np.maximum(np.asarray(self.total_sq) / self.count - mean**2, 0.0)
        # Constant features (every perovskite angle is 90 degrees) get a floor instead of std 0.
        return mean.tolist(), np.maximum(np.sqrt(var), min_std).tolist()


@dataclass(frozen=True)
class Normalizer:
    """Model-space transforms for one spec; serialisable into manifests and checkpoints."""

    coords: str = "fractional"
    lattice_mean: tuple[float, ...] = _DEFAULT_FRAC_MEAN
    lattice_std: tuple[float, ...] = _DEFAULT_FRAC_STD
    cartesian_scale: float = 20.0  # Angstrom: |x| up to this maps inside [0, 1]

    @classmethod
    def default(cls, spec: UniMatSpec) -> "Normalizer":
        if spec.coords == "fractional":
            return cls("fractional")
        return cls("cartesian", (0.0,) * 9, (8.0,) * 9)

    @classmethod
    def fit(cls, lattices: np.ndarray, spec: UniMatSpec, positions: np.ndarray | None = None) -> "Normalizer":
        """Fit lattice statistics (and the Cartesian scale from ``positions``/lattices) to a data set."""
        stats = LatticeStats(spec.coords)
        stats.update(lattices)
        return cls.from_stats(stats, spec, lattices)

    @classmethod
    def from_stats(cls, stats: LatticeStats, spec: UniMatSpec, lattices: np.ndarray | None = None) -> "Normalizer":
        mean, std = stats.mean_std()
        scale = 20.0
        if spec.coords == "cartesian" and lattices is not None:
            m = np.asarray(lattices).reshape(-1, 3, 3)
            scale = float(np.abs(m).sum(1).max())  # the farthest corner of any cell
        return cls(spec.coords, tuple(mean), tuple(std), scale)

    def to_dict(self) -> dict[str, Any]:
        return {
            "coords": self.coords,
            "lattice_mean": list(self.lattice_mean),
            "lattice_std": list(self.lattice_std),
            "cartesian_scale": self.cartesian_scale,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Normalizer":
        return cls(d["coords"], tuple(d["lattice_mean"]), tuple(d["lattice_std"]), float(d.get("cartesian_scale", 20.0)))

    # ------------------------------------------------------------------ positions
    def positions_to_model(self, positions, mask):
        """(..., L, H, W, 3) raw positions + (..., L, H, W) mask -> model-space positions."""
        xp = namespace(positions)
        x = positions if self.coords == "fractional" else 0.5 + positions / (2.0 * self.cartesian_scale)
        return xp.where(mask[..., None], x, xp.zeros_like(x) + NULL_VALUE)

    def positions_from_model(self, x, mask=None):
        """Model-space positions -> (raw positions, mask). ``mask`` (e.g. exact counts) overrides the rule."""
        xp = namespace(x)
        if mask is None:
            mask = infer_mask(x, MASK_THRESHOLD)
        if self.coords == "fractional":
            pos = xp.mod(x, 1.0)
        else:
            pos = (x - 0.5) * (2.0 * self.cartesian_scale)
        pos = xp.where(mask[..., None], pos, xp.zeros_like(pos) + NULL_VALUE)
        return pos, mask

    # ------------------------------------------------------------------ lattice
    def _mean_std(self, like):
        xp = namespace(like)
        if xp is np:
            return np.asarray(self.lattice_mean), np.asarray(self.lattice_std)
        return (
            xp.tensor(self.lattice_mean, dtype=like.dtype, device=like.device),
            xp.tensor(self.lattice_std, dtype=like.dtype, device=like.device),
        )

    def lattice_to_model(self, lattice):
        mean, std = self._mean_std(lattice)
        return (_lattice_features(lattice, self.coords) - mean) / std

    def lattice_from_model(self, y):
        """Model-space lattice -> physical lattice, clipped to physical ranges (see module doc)."""
        xp = namespace(y)
        mean, std = self._mean_std(y)
        feats = y * std + mean
        if self.coords == "fractional":
            feats = xp.concatenate([xp.exp(xp.clip(feats[..., :3], -5.0, 6.0)), feats[..., 3:]], -1)
            return clip_params(feats)
        shape = feats.shape
        matrix = feats.reshape(*shape[:-1], 3, 3)
        params = matrix_to_params(matrix)
        clipped = clip_params(params)
        # Keep the predicted frame (the positions live in it); only a cell whose parameters needed
        # clipping is rebuilt, in the canonical frame, from the clipped parameters.
        ok = (xp.abs(clipped - params) < 1e-6).all(-1)
        rebuilt = params_to_matrix(clipped)
        return xp.where(ok[..., None, None], matrix, rebuilt).reshape(shape)


def structures_from_model(
    x,
    lattice,
    spec: UniMatSpec,
    normalizer: Normalizer,
    mask=None,
) -> list:
    """Decode a batch of model outputs (B, L, H, W, 3) + (B, D) into pymatgen structures.

    A crystal with no atom left after the decoding rule decodes to ``None``.
    """
    if namespace(x) is not np:
        x = x.detach().float().cpu().numpy()
        lattice = lattice.detach().float().cpu().numpy()
        if mask is not None and namespace(mask) is not np:
            mask = mask.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    pos, m = normalizer.positions_from_model(x, None if mask is None else np.asarray(mask, dtype=bool))
    lat = normalizer.lattice_from_model(np.asarray(lattice, dtype=np.float64))
    out: list = []
    for i in range(x.shape[0]):
        mi = m[i] & spec.allowed_cells[None]
        out.append(decode(UniMatTensor(pos[i], mi, lat[i]), spec) if mi.any() else None)
    return out


def batch_to_model(positions, mask, lattice, normalizer: Normalizer) -> tuple[Any, Any]:
    """Convenience: raw batch arrays -> (model positions, model lattice)."""
    return normalizer.positions_to_model(positions, mask), normalizer.lattice_to_model(lattice)


__all__: Sequence[str] = [
    "LatticeStats",
    "MASK_THRESHOLD",
    "Normalizer",
    "batch_to_model",
    "structures_from_model",
]
