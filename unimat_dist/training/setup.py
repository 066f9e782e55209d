"""Build everything a training run needs from its config, shared by the local and the distributed trainer.

    setup = prepare_run(cfg)             # spec, data, normalizer, property scaler, diffusion model, batcher
    engine = LocalEngine(setup.diffusion, optimizer, ...)   # or a DeepSpeed adapter
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from unimat_dist.diffusion import GaussianDiffusion
from unimat_dist.model import PropertyScaler, build_transformer, build_unet
from unimat_dist.representation import Normalizer, UniMatSpec

from .batches import Batcher
from .config import DataConfig, TrainConfig
from .data import EncodedSet, InMemorySource, load_encoded_split

log = logging.getLogger(__name__)


def resolve_spec(data: DataConfig) -> UniMatSpec:
    """The UniMat spec of a run: the data set's L and chemical system unless the config overrides them."""
    from unimat_dist.datasets import spec_for_dataset

    return spec_for_dataset(data.dataset, max_atoms_per_element=data.max_atoms_per_element or None,
                            elements=data.elements, coords=data.coords)


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
    manifest: Any = None  # unimat_dist.shards.manifest.Manifest when training streams ingested shards

    @property
    def num_train(self) -> int:
        return self.manifest.split_counts.get(self.train_split, 0) if self.manifest is not None else len(self.train_data)

    train_split: str = "train"


def load_data(cfg: TrainConfig, spec: UniMatSpec) -> tuple[EncodedSet, EncodedSet | None, list[str]]:
    d = cfg.data
    train, note_t = load_encoded_split(
        d.dataset, d.train_split, spec, limit=d.limit_train, cache_dir=d.cache_dir, skip_invalid=d.skip_invalid
    )
    val, note_v = load_encoded_split(
        d.dataset, d.val_split, spec, limit=d.limit_val, cache_dir=d.cache_dir, skip_invalid=d.skip_invalid
    )
    return train, val, [note_t, note_v]


def build_diffusion(cfg: TrainConfig, spec: UniMatSpec, num_properties: int, normalizer: Normalizer) -> GaussianDiffusion:
    if cfg.model.arch == "transformer":
        net = build_transformer(cfg.model.transformer(), spec, normalizer, num_properties)
    else:
        net = build_unet(cfg.model.unet(), spec, num_properties)
    dc = cfg.diffusion
    if dc.positions == "circle" and (cfg.model.arch != "transformer" or spec.coords != "fractional"):
        raise ValueError("diffusion.positions: circle needs model.arch: transformer and fractional coordinates")
    if cfg.model.arch == "transformer" and dc.positions != "circle":
        raise ValueError("model.arch: transformer needs diffusion.positions: circle (its inputs are circle embeddings)")
    return GaussianDiffusion(net, spec.allowed_cells, dc.timesteps, dc.schedule, dc.loss_weighting,
                             dc.lattice_loss_weight, dc.positions, dc.composition_loss_weight)


def manifest_spec(data: DataConfig, manifest) -> UniMatSpec:
    """The shards' spec, refused (``ValueError`` naming every difference) if the config asks for another one."""
    spec = manifest.spec
    wanted = UniMatSpec(
        max_atoms_per_element=data.max_atoms_per_element or spec.L,
        coords=data.coords,
        elements=tuple(data.elements) if data.elements is not None else spec.elements,
    )
    wanted.check_compatible(spec, what=f"the shards of {manifest.uri}")
    return spec


def _scaler_from_manifest(names, manifest) -> PropertyScaler:
    stats = manifest.raw.get("property_stats", {})
    missing = [n for n in names if n not in stats or not stats[n].get("count")]
    if missing:
        raise ValueError(f"{manifest.uri}: no statistics for conditioning propert(ies) {missing}; has {sorted(stats)}")
    return PropertyScaler(tuple(names), tuple(float(stats[n]["mean"]) for n in names),
                          tuple(float(max(stats[n]["std"], 1e-6)) for n in names))


def prepare_run(cfg: TrainConfig, *, device: torch.device | str = "cpu", rank: int = 0) -> RunSetup:
    """Data, transforms and model for ``cfg``. The model is initialised from ``cfg.seed`` (identical on
    every rank); afterwards the global torch RNG is reseeded per rank, so ranks draw different noise.

    With ``data.manifest`` the training split is streamed from shards (see ``make_train_source``) and
    the spec, normaliser and property statistics come from the manifest."""
    manifest = None
    if cfg.data.manifest:
        from .shard_source import encoded_from_shards, load_manifest

        manifest = load_manifest(cfg.data.manifest, cfg.data.storage_options or None)
        spec = manifest_spec(cfg.data, manifest)
        for split in (cfg.data.train_split, cfg.data.val_split):
            if split not in manifest.split_counts:
                raise ValueError(f"{manifest.uri}: no split {split!r} (has {sorted(manifest.split_counts)})")
        limit = cfg.data.limit_val or (cfg.train.val_batches * cfg.train.global_batch_size if cfg.train.val_batches else None)
        train, val = None, encoded_from_shards(manifest, cfg.data.val_split, limit, cfg.data.storage_options or None)
        notes = [f"shards {manifest.uri}: {manifest.split_counts}"]
        normalizer = manifest.get_normalizer()
        scaler = _scaler_from_manifest(cfg.data.properties, manifest)
    else:
        spec = resolve_spec(cfg.data)
        train, val, notes = load_data(cfg, spec)
        normalizer = Normalizer.fit(train.lattice.astype(np.float64), spec, train.positions)
        scaler = PropertyScaler.fit(cfg.data.properties, train.properties)
    torch.manual_seed(cfg.seed)
    diffusion = build_diffusion(cfg, spec, len(scaler.names), normalizer).to(device)
    torch.manual_seed(cfg.seed + 1 + rank)
    np.random.seed((cfg.seed + 1 + rank) % 2**32)
    batcher = Batcher(spec, normalizer, scaler, cfg.augment, cfg.conditioning, seed=cfg.seed * 7919 + rank)
    return RunSetup(spec, normalizer, scaler, train, val, notes, diffusion, batcher, manifest, cfg.data.train_split)


def make_train_source(cfg: TrainConfig, setup: RunSetup, *, rank: int = 0, world_size: int = 1):
    """This rank's endless, resumable training batches: shards (``data.manifest``) or the in-memory split."""
    micro, _ = cfg.train.grad_accum_steps(world_size)
    if setup.manifest is not None:
        from .shard_source import ShardSource

        source = ShardSource(
            setup.manifest, cfg.data.train_split, micro, seed=cfg.seed, rank=rank, world_size=world_size,
            shuffle_buffer=cfg.data.shuffle_buffer, num_workers=cfg.data.loader_workers,
            storage_options=cfg.data.storage_options or None,
        )
    else:
        source = InMemorySource(setup.train_data, micro, seed=cfg.seed, rank=rank, world_size=world_size)
    if cfg.data.replay_batches:
        from .data import ReplaySource

        return ReplaySource(source, cfg.data.replay_batches)
    return source
