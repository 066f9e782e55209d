"""Training data from ingested WebDataset shards (``unimat ingest`` output), for the local and the
distributed trainer: set ``data.manifest`` in the training config.

``ShardSource`` is the shard-backed twin of ``InMemorySource``: endless micro-batches for one rank
(epoch after epoch, shards re-dealt to ranks each epoch by ``unimat_dist.shards.reader``), with the
position ``(epoch, batches consumed)`` as its checkpoint state, so a resumed run continues with exactly
the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import logging
from typing import Any, Iterator

import numpy as np

from unimat_dist.shards.manifest import Manifest, read_manifest
from unimat_dist.shards.reader import ShardLoader, iter_samples

from .data import EncodedSet

log = logging.getLogger(__name__)


class ShardSource:
    def __init__(
        self,
        manifest: Manifest,
        split: str,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 1000,
        num_workers: int = 0,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.manifest, self.split, self.batch_size = manifest, split, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.shuffle_buffer, self.num_workers, self.storage_options = shuffle_buffer, num_workers, storage_options
        self.epoch, self.consumed = 0, 0

    def _loader(self) -> ShardLoader:
        return ShardLoader(
            self.manifest, self.split, rank=self.rank, world_size=self.world_size, batch_size=self.batch_size,
            shuffle_buffer=self.shuffle_buffer, seed=self.seed, epoch=self.epoch, num_workers=self.num_workers,
            start_batch=self.consumed, drop_last=True, even_batches=True, storage_options=self.storage_options,
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        empty_epochs = 0
        while True:
            loader = self._loader()
            n = 0
            for batch in loader:
                self.consumed += 1
                n += 1
                yield batch
            empty_epochs = empty_epochs + 1 if n == 0 and self.consumed == 0 else 0
            if empty_epochs > 1:
                raise ValueError(
                    f"{self.manifest.uri}: split {self.split!r} yields no full batch of {self.batch_size} for rank "
                    f"{self.rank}/{self.world_size}; use a smaller batch or fewer workers"
                )
            self.epoch, self.consumed = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(f"data source seed {self.seed} differs from the checkpoint's {state['seed']}")
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])

    def resize_state(self, state: dict[str, int], old_world: int, old_micro: int) -> dict[str, int]:
        """Position for a checkpoint written by ``old_world`` ranks: same epoch, same global sample offset.
        Shards are dealt differently for another world size, so within that epoch a few samples may
        repeat or be skipped (documented approximation)."""
        samples = int(state["consumed"]) * old_micro * old_world
        return {"epoch": int(state["epoch"]), "consumed": samples // (self.batch_size * self.world_size),
                "seed": int(state["seed"])}


def encoded_from_shards(manifest: Manifest, split: str, limit: int | None = None,
                        storage_options: dict[str, Any] | None = None) -> EncodedSet:
    """The first ``limit`` samples of a split as an in-memory ``EncodedSet`` (validation data)."""
    pos, mask, lat, ids = [], [], [], []
    props: dict[str, list[float]] = {p: [] for p in manifest.properties}
    for i, s in enumerate(iter_samples(manifest, split, storage_options)):
        if limit is not None and i >= limit:
            break
        pos.append(s["positions"].astype(np.float32))
        mask.append(s["mask"])
        lat.append(s["lattice"].astype(np.float32))
        ids.append(s["meta"]["id"])
        for p in props:
            v = s["meta"].get("properties", {}).get(p)
            props[p].append(np.nan if v is None else float(v))
    if not ids:
        raise ValueError(f"{manifest.uri}: split {split!r} is empty")
    return EncodedSet(np.stack(pos), np.stack(mask), np.stack(lat),
                      {p: np.asarray(v, dtype=np.float32) for p, v in props.items()}, ids)


def load_manifest(uri: str, storage_options: dict[str, Any] | None = None) -> Manifest:
    m = read_manifest(uri, storage_options)
    log.info("shards: %s (%s), splits %s", m.uri, m.spec.describe(), m.split_counts)
    return m
