"""Build everything a training run needs from its config, shared by the local and the distributed trainer.

    setup = prepare_run(cfg)             # spec, data, normalizer, property scaler, diffusion model, batcher
    engine = LocalEngine(setup.diffusion, optimizer, ...)   # or a DeepSpeed adapter (issue 7)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from unimat_dist.diffusion import GaussianDiffusion
from unimat_dist.model import PropertyScaler, build_unet
from unimat_dist.representation import Normalizer, UniMatSpec

from .batches import Batcher
from .config import DataConfig, TrainConfig
from .data import EncodedSet, load_encoded_split

log = logging.getLogger(__name__)


def resolve_spec(data: DataConfig) -> UniMatSpec:
    """The UniMat spec of a run: the data set's L and chemical system unless the config overrides them."""
    from unimat_dist.datasets import get_info

    info = get_info(data.dataset)
    elements = data.elements if data.elements is not None else info.elements
    return UniMatSpec(
        max_atoms_per_element=data.max_atoms_per_element or info.max_atoms_per_element,
        coords=data.coords,
        elements=tuple(elements) if elements else None,
    )


@dataclass
class RunSetup:
    spec: UniMatSpec
    normalizer: Normalizer
    scaler: PropertyScaler
    train_data: EncodedSet
    val_data: EncodedSet | None
    notes: list[str]  # data provenance (substituted splits are departures from the official protocol)
    diffusion: GaussianDiffusion
    batcher: Batcher


def load_data(cfg: TrainConfig, spec: UniMatSpec) -> tuple[EncodedSet, EncodedSet | None, list[str]]:
    d = cfg.data
    train, note_t = load_encoded_split(
        d.dataset, d.train_split, spec, limit=d.limit_train, cache_dir=d.cache_dir, skip_invalid=d.skip_invalid
    )
    val, note_v = load_encoded_split(
        d.dataset, d.val_split, spec, limit=d.limit_val, cache_dir=d.cache_dir, skip_invalid=d.skip_invalid
    )
    return train, val, [note_t, note_v]


def build_diffusion(cfg: TrainConfig, spec: UniMatSpec, num_properties: int) -> GaussianDiffusion:
    net = build_unet(cfg.model.unet(), spec, num_properties)
    dc = cfg.diffusion
    return GaussianDiffusion(net, spec.allowed_cells, dc.timesteps, dc.schedule, dc.loss_weighting, dc.lattice_loss_weight)


def prepare_run(cfg: TrainConfig, *, device: torch.device | str = "cpu", rank: int = 0) -> RunSetup:
    """Data, transforms and model for ``cfg``. The model is initialised from ``cfg.seed`` (identical on
    every rank); afterwards the global torch RNG is reseeded per rank, so ranks draw different noise."""
    spec = resolve_spec(cfg.data)
    train, val, notes = load_data(cfg, spec)
    normalizer = Normalizer.fit(train.lattice.astype(np.float64), spec, train.positions)
    scaler = PropertyScaler.fit(cfg.data.properties, train.properties)
    torch.manual_seed(cfg.seed)
    diffusion = build_diffusion(cfg, spec, len(scaler.names)).to(device)
    torch.manual_seed(cfg.seed + 1 + rank)
    np.random.seed((cfg.seed + 1 + rank) % 2**32)
    batcher = Batcher(spec, normalizer, scaler, cfg.augment, cfg.conditioning, seed=cfg.seed * 7919 + rank)
    return RunSetup(spec, normalizer, scaler, train, val, notes, diffusion, batcher)
