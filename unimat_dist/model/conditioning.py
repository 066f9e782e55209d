"""What the denoiser is conditioned on, as batched tensors: `Condition`, and `PropertyScaler`.

Composition (one tensor for every kind of request, so mixed batches need no branching):
    composition (B, L, H, W) float: the exact-count mask (1 in slots 0..n_e-1 of element e's cell) when
        ``exact[b]``, else the element-type mask (H, W) repeated along L; all zeros = no composition.
    exact (B,) bool.
Auxiliary properties (formation energy, band gap, ...), standardised with the training set's mean/std:
    properties (B, P) float, property_mask (B, P) bool: False = no value given (missing in the data,
    dropped for classifier-free guidance, or not requested), which selects the learned null embedding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch


@dataclass
class Condition:
    composition: torch.Tensor  # (B, L, H, W) float
    exact: torch.Tensor  # (B,) bool
    properties: torch.Tensor  # (B, P) float, standardised
    property_mask: torch.Tensor  # (B, P) bool

    def __post_init__(self) -> None:
        b = self.composition.shape[0]
        if self.composition.dim() != 4:
            raise ValueError(f"composition must be (B, L, H, W), got shape {tuple(self.composition.shape)}")
        for name in ("exact", "properties", "property_mask"):
            if getattr(self, name).shape[0] != b:
                raise ValueError(f"{name} has batch size {getattr(self, name).shape[0]}, composition has {b}")
        if self.properties.shape != self.property_mask.shape:
            raise ValueError(
                f"properties {tuple(self.properties.shape)} and property_mask {tuple(self.property_mask.shape)} differ"
            )

    @classmethod
    def unconditional(cls, batch: int, shape: tuple[int, int, int], num_properties: int, device=None) -> "Condition":
        """No composition, no properties: the fully unconditional model."""
        return cls(
            torch.zeros((batch, *shape), device=device),
            torch.zeros(batch, dtype=torch.bool, device=device),
            torch.zeros((batch, num_properties), device=device),
            torch.zeros((batch, num_properties), dtype=torch.bool, device=device),
        )

    def __len__(self) -> int:
        return self.composition.shape[0]

    def to(self, device) -> "Condition":
        return Condition(*(t.to(device) for t in self._fields()))

    def __getitem__(self, rows) -> "Condition":
        return Condition(*(t[rows] for t in self._fields()))

    @staticmethod
    def cat(conds: Sequence["Condition"]) -> "Condition":
        return Condition(*(torch.cat(ts) for ts in zip(*(c._fields() for c in conds))))

    def without_properties(self) -> "Condition":
        """The same composition with every property replaced by the null embedding (the CFG branch)."""
        return Condition(self.composition, self.exact, torch.zeros_like(self.properties),
                         torch.zeros_like(self.property_mask))

    def has_properties(self) -> torch.Tensor:
        """(B,) bool: at least one property value is given."""
        return self.property_mask.any(-1)

    def channels(self) -> torch.Tensor:
        """(B, 2, L, H, W) input channels: element-type mask, exact-count mask (each zero when unused)."""
        ex = self.exact.to(self.composition.dtype)[:, None, None, None]
        return torch.stack([self.composition * (1 - ex), self.composition * ex], 1)

    def allowed_slots(self, allowed_cells: torch.Tensor) -> torch.Tensor:
        """(B, L, H, W) bool: slots that may hold an atom given this condition and the spec's cells.

        Exact counts: exactly the count-mask slots. Element types: every slot of the requested cells.
        No composition: every slot of the cells the spec allows.
        """
        occupied_cells = self.composition.amax(1, keepdim=True) > 0.5  # (B, 1, H, W)
        given = occupied_cells.flatten(1).any(-1)[:, None, None, None]
        by_cells = torch.where(given, occupied_cells, torch.ones_like(occupied_cells)).expand_as(self.composition)
        slots = torch.where(self.exact[:, None, None, None], self.composition > 0.5, by_cells)
        return slots & allowed_cells.to(slots.device)[None, None]

    def _fields(self) -> tuple[torch.Tensor, ...]:
        return (self.composition, self.exact, self.properties, self.property_mask)


@dataclass(frozen=True)
class PropertyScaler:
    """Standardisation of the conditioning properties (fitted on the training split, stored in checkpoints)."""

    names: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    @classmethod
    def fit(cls, names: Sequence[str], values: Mapping[str, np.ndarray]) -> "PropertyScaler":
        means, stds = [], []
        for n in names:
            if n not in values:
                raise ValueError(f"property {n!r} is not a column of the data (columns: {sorted(values)})")
            v = np.asarray(values[n], dtype=np.float64)
            v = v[np.isfinite(v)]
            if v.size == 0:
                raise ValueError(f"property {n!r} has no finite value in the training data")
            means.append(float(v.mean()))
            stds.append(float(max(v.std(), 1e-6)))
        return cls(tuple(names), tuple(means), tuple(stds))

    def transform(self, values: Mapping[str, Any], batch: int) -> tuple[np.ndarray, np.ndarray]:
        """{name: (B,) or scalar, NaN = missing} -> (values (B, P) standardised, mask (B, P) bool).

        Names not in the mapping are missing for every row; names the model does not know are an error.
        """
        unknown = sorted(set(values) - set(self.names))
        if unknown:
            known = ", ".join(self.names) if self.names else "none (the model is not property-conditioned)"
            raise ValueError(f"unknown conditioning propert{'y' if len(unknown) == 1 else 'ies'} {unknown}; known: {known}")
        out = np.zeros((batch, len(self.names)), dtype=np.float32)
        mask = np.zeros((batch, len(self.names)), dtype=bool)
        for j, n in enumerate(self.names):
            if n not in values or values[n] is None:
                continue
            v = np.broadcast_to(np.asarray(values[n], dtype=np.float64), (batch,))
            ok = np.isfinite(v)
            out[:, j] = np.where(ok, (v - self.mean[j]) / self.std[j], 0.0)
            mask[:, j] = ok
        return out, mask

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PropertyScaler":
        return cls(tuple(d["names"]), tuple(float(x) for x in d["mean"]), tuple(float(x) for x in d["std"]))


__all__ = ["Condition", "PropertyScaler"]
