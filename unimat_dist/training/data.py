"""In-memory training data from the bundled CDVAE CSVs, yielding batches in the shard-reader contract.

A batch is a dict (what the data-pipeline's WebDataset shard reader also yields, so the trainer takes
either source)::

    positions   float32 (B, L, H, W, 3)  raw: fractional in [0, 1) or Cartesian Angstrom, nulls at -1
    mask        bool    (B, L, H, W)
    lattice     float32 (B, D)           raw (a, b, c, alpha, beta, gamma) or the 3x3 matrix
    properties  {name: float32 (B,)}     NaN where missing
    id          list[str]

Parsing a CIF costs ~1.5-7 ms, so encoded splits are cached as .npz files keyed by the CSV's sha256,
the spec and the row limit (``$UNIMAT_CACHE/encoded`` by default).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from unimat_dist.representation import UniMatSpec, encode

log = logging.getLogger(__name__)
CACHE_VERSION = 1


@dataclass
class EncodedSet:
    """A whole encoded split in memory (see the module doc for the array layout)."""

    positions: np.ndarray
    mask: np.ndarray
    lattice: np.ndarray
    properties: dict[str, np.ndarray]
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, index: Sequence[int] | np.ndarray) -> dict[str, Any]:
        idx = np.asarray(index, dtype=np.int64)
        return {
            "positions": self.positions[idx],
            "mask": self.mask[idx],
            "lattice": self.lattice[idx],
            "properties": {k: v[idx] for k, v in self.properties.items()},
            "id": [self.ids[i] for i in idx.tolist()],
        }


def compositions_of(encoded: EncodedSet, spec: UniMatSpec) -> list[dict[str, int]]:
    """{element symbol: atom count} of every crystal of an encoded set."""
    from unimat_dist.representation.periodic_table import SYMBOLS

    counts = encoded.mask.sum(1)  # (N, H, W)
    out = []
    for c in counts:
        hh, ww = np.nonzero(c)
        out.append({SYMBOLS[spec.z_at_cell[h, w] - 1]: int(c[h, w]) for h, w in zip(hh, ww)})
    return out


def encode_records(records, spec: UniMatSpec, skip_invalid: bool = True) -> EncodedSet:
    """Parse and encode CDVAE records (``CifRecord``); rows that cannot be represented are skipped
    (logged with their ids) or raise, per ``skip_invalid``."""
    from unimat_dist.datasets import structure_from_cif

    pos, mask, lat, ids, props = [], [], [], [], []
    skipped: list[str] = []
    for rec in records:
        try:
            t = encode(structure_from_cif(rec.cif, rec.id), spec, record=rec.id)
        except ValueError as exc:
            if not skip_invalid:
                raise
            skipped.append(f"{exc}")
            continue
        pos.append(t.positions.astype(np.float32))
        mask.append(t.mask)
        lat.append(t.lattice.astype(np.float32))
        ids.append(rec.id)
        props.append(rec.properties)
    if skipped:
        log.warning("skipped %d record(s) that cannot be encoded with %s, e.g. %s", len(skipped), spec.describe(), skipped[:3])
    if not ids:
        raise ValueError(f"no record could be encoded with {spec.describe()}")
    names = sorted({k for p in props for k in p})
    properties = {
        n: np.asarray([np.nan if p.get(n) is None else p[n] for p in props], dtype=np.float32) for n in names
    }
    return EncodedSet(np.stack(pos), np.stack(mask), np.stack(lat), properties, ids)


def _cache_root(cache_dir: str | None) -> Path:
    if cache_dir:
        return Path(cache_dir)
    return Path(os.environ.get("UNIMAT_CACHE", Path.home() / ".cache" / "unimat")) / "encoded"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_encoded_split(
    dataset: str,
    split: str,
    spec: UniMatSpec,
    *,
    limit: int | None = None,
    cache_dir: str | None = None,
    skip_invalid: bool = True,
) -> tuple[EncodedSet, str]:
    """(encoded split, provenance note) of a registry data set, from the cache when possible."""
    from unimat_dist.datasets import get_info, iter_cdvae_csv, resolve_split

    resolved = resolve_split(dataset, split)
    key_src = json.dumps(
        {"v": CACHE_VERSION, "sha": _sha256(resolved.path), "spec": spec.to_dict(), "limit": limit, "skip": skip_invalid},
        sort_keys=True,
    )
    key = hashlib.sha256(key_src.encode()).hexdigest()[:20]
    path = _cache_root(cache_dir) / f"{dataset}-{split}-{key}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            props = {k[5:]: z[k] for k in z.files if k.startswith("prop:")}
            enc = EncodedSet(z["positions"], z["mask"], z["lattice"], props, z["ids"].tolist())
        log.info("%s: %d encoded rows from cache %s", resolved.note, len(enc), path)
        return enc, resolved.note

    def rows():
        for i, rec in enumerate(iter_cdvae_csv(resolved.path, get_info(dataset).id_column)):
            if limit is not None and i >= limit:
                return
            yield rec

    enc = encode_records(rows(), spec, skip_invalid)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez(
        tmp,
        positions=enc.positions,
        mask=enc.mask,
        lattice=enc.lattice,
        ids=np.asarray(enc.ids, dtype=str),
        **{f"prop:{k}": v for k, v in enc.properties.items()},
    )
    os.replace(tmp, path)
    log.info("%s: encoded %d rows, cached at %s", resolved.note, len(enc), path)
    return enc, resolved.note


class InMemorySource:
    """Endless shuffled micro-batches of an ``EncodedSet`` for one rank, resumable exactly.

    Every epoch is a permutation drawn from (seed, epoch); rank r of a world of size n takes every n-th
    batch-sized chunk, so ranks see disjoint data. ``state_dict`` is the (epoch, cursor) position.
    A shard source for the distributed trainer implements the same three methods.
    """

    def __init__(self, data: EncodedSet, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(data) < batch_size * world_size:
            # Small sets (overfitting runs) repeat within an epoch rather than starve a rank.
            reps = -(-batch_size * world_size // len(data))
            self._base = np.tile(np.arange(len(data)), reps)
        else:
            self._base = np.arange(len(data))
        self.data, self.batch_size, self.seed, self.rank, self.world_size = data, batch_size, seed, rank, world_size
        self.epoch, self.cursor = 0, 0

    def _order(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        return self._base[rng.permutation(len(self._base))]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        stride = self.batch_size * self.world_size
        while True:
            order = self._order()
            usable = len(order) // stride * stride  # drop the ragged tail so every rank steps together
            while self.cursor + stride <= usable:
                start = self.cursor + self.rank * self.batch_size
                self.cursor += stride
                yield self.data.batch(order[start : start + self.batch_size])
            self.epoch, self.cursor = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(f"data source seed {self.seed} differs from the checkpoint's {state['seed']}")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])

    def resize_state(self, state: dict[str, int], old_world: int, old_micro: int) -> dict[str, int]:
        """Position for a checkpoint written with another world size: ``cursor`` counts samples of the
        epoch over all ranks, so it carries over, rounded down to this run's global stride."""
        stride = self.batch_size * self.world_size
        return {"epoch": int(state["epoch"]), "cursor": int(state["cursor"]) // stride * stride, "seed": int(state["seed"])}


class ReplaySource:
    """The first ``n`` micro-batches of another source, read once (before the first step) and then
    repeated from memory: the training loop with data loading taken out (``data.replay_batches``).
    A measurement tool, not a way to train: its position is the step within the replayed window."""

    def __init__(self, source, n: int) -> None:
        if n < 1:
            raise ValueError(f"replay_batches must be >= 1, got {n}")
        it = iter(source)
        self.batches = [next(it) for _ in range(n)]
        self.cursor = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            batch = self.batches[self.cursor % len(self.batches)]
            self.cursor += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"cursor": self.cursor}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.cursor = int(state.get("cursor", 0))

    def resize_state(self, state: dict[str, int], old_world: int, old_micro: int) -> dict[str, int]:
        return dict(state)


class TimedSource:
    """Wraps a data source and accumulates the time spent waiting for the next batch (the trainer's
    observers get it per step: how much of a step was the data's)."""

    def __init__(self, source) -> None:
        self.source = source
        self.wait = 0.0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        it = iter(self.source)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.wait += time.perf_counter() - t0
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return self.source.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state)

    def resize_state(self, state: dict[str, Any], old_world: int, old_micro: int) -> dict[str, Any]:
        """The data position of a checkpoint written with another world size, mapped to this one."""
        return self.source.resize_state(state, old_world, old_micro)


def iter_batches(data: EncodedSet, batch_size: int, max_batches: int | None = None) -> Iterator[dict[str, Any]]:
    """The set in order, in batches (the last one may be smaller): validation."""
    for n, start in enumerate(range(0, len(data), batch_size)):
        if max_batches is not None and n >= max_batches:
            return
        yield data.batch(np.arange(start, min(start + batch_size, len(data))))
