"""Raw data batches -> `ModelBatch`: augmentation, normalisation to model space, conditioning draws.

The `Batcher` owns the torch generator for every random choice it makes (augmentations, which kind of
composition conditioning each sample gets, property dropout), so its state is a checkpoint part and a
resumed run draws exactly what an uninterrupted one would.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from unimat_dist.model.conditioning import Condition, PropertyScaler
from unimat_dist.representation import Normalizer, UniMatSpec, random_rotation, random_translation, shuffle_slots

from .config import AugmentConfig, ConditioningConfig

COMPOSITION_NONE, COMPOSITION_ELEMENTS, COMPOSITION_COUNTS = 0, 1, 2


@dataclass
class ModelBatch:
    x0: torch.Tensor  # (B, L, H, W, 3) model-space positions
    y0: torch.Tensor  # (B, D) model-space lattice
    mask: torch.Tensor  # (B, L, H, W) bool atoms
    cond: Condition

    def __len__(self) -> int:
        return self.x0.shape[0]

    def to(self, device) -> "ModelBatch":
        return ModelBatch(self.x0.to(device), self.y0.to(device), self.mask.to(device), self.cond.to(device))


def composition_condition(mask: torch.Tensor, kind: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(composition (B, L, H, W), exact (B,)) from atom masks and a per-sample kind (0 none, 1 types, 2 counts)."""
    counts = mask.float()
    types = mask.any(1, keepdim=True).float().expand_as(counts)
    k = kind[:, None, None, None]
    comp = torch.where(k == COMPOSITION_COUNTS, counts, torch.where(k == COMPOSITION_ELEMENTS, types, 0.0))
    return comp, kind == COMPOSITION_COUNTS


class Batcher:
    def __init__(
        self,
        spec: UniMatSpec,
        normalizer: Normalizer,
        scaler: PropertyScaler,
        augment: AugmentConfig | None,
        conditioning: ConditioningConfig,
        seed: int = 0,
    ) -> None:
        self.spec, self.normalizer, self.scaler = spec, normalizer, scaler
        self.augment, self.conditioning = augment, conditioning
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, batch: dict[str, Any], generator: torch.Generator | None = None, augment: bool = True) -> ModelBatch:
        """``generator`` replaces the batcher's own (validation uses a fixed one); ``augment=False`` skips augmentation."""
        g = generator if generator is not None else self.generator
        pos = torch.as_tensor(np.asarray(batch["positions"]), dtype=torch.float32)
        mask = torch.as_tensor(np.asarray(batch["mask"]), dtype=torch.bool)
        lat = torch.as_tensor(np.asarray(batch["lattice"]), dtype=torch.float32)
        if tuple(pos.shape[1:]) != self.spec.shape or lat.shape[1:] != (self.spec.lattice_dim,):
            raise ValueError(
                f"batch has positions {tuple(pos.shape)} and lattice {tuple(lat.shape)}; "
                f"{self.spec.describe()} needs (B, {', '.join(map(str, self.spec.shape))}) and (B, {self.spec.lattice_dim})"
            )
        b = pos.shape[0]
        aug = self.augment if augment else None
        if aug is not None:
            if aug.shuffle_slots != "none":
                pos, mask = shuffle_slots(pos, mask, g, mode=aug.shuffle_slots)
            if aug.translate and self.spec.coords == "fractional":
                pos, mask = random_translation(pos, mask, g)
            if aug.rotate and self.spec.coords == "cartesian":
                pos, mask, lat = random_rotation(pos, mask, lat, g)
        x0 = self.normalizer.positions_to_model(pos, mask).float()
        y0 = self.normalizer.lattice_to_model(lat).float()

        c = self.conditioning
        u = torch.rand(b, generator=g)
        kind = torch.full((b,), COMPOSITION_COUNTS, dtype=torch.long)
        kind[u < c.p_unconditional + c.p_element_types] = COMPOSITION_ELEMENTS
        kind[u < c.p_unconditional] = COMPOSITION_NONE
        comp, exact = composition_condition(mask, kind)

        props = batch.get("properties", {}) or {}
        missing = [n for n in self.scaler.names if n not in props]
        if missing:
            raise ValueError(f"batch has no property column(s) {missing} (has {sorted(props)}; ids {batch['id'][:3]}...)")
        values, given = self.scaler.transform({n: props[n] for n in self.scaler.names}, b)
        given = torch.as_tensor(given) & (torch.rand(b, generator=g) >= c.p_drop_properties)[:, None]
        cond = Condition(comp, exact, torch.as_tensor(values), given)
        return ModelBatch(x0, y0, mask, cond)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
