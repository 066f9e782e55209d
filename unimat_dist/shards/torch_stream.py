"""The torch ``IterableDataset`` behind ``ShardLoader`` with ``num_workers > 0`` (imports torch, so it
lives apart from ``reader``, which ingestion workers import without paying for torch)."""
from __future__ import annotations

import torch.utils.data

from .reader import StreamPlan, StreamReader, round_robin


class StreamDataset(torch.utils.data.IterableDataset):
    """DataLoader worker ``j`` yields the batches of ``plans[j]``; without workers, all round-robin."""

    def __init__(self, reader: StreamReader, plans: list[StreamPlan]) -> None:
        self.reader = reader
        self.plans = plans

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        if info is None:
            yield from round_robin([self.reader.batches(p) for p in self.plans])
            return
        if info.num_workers != len(self.plans):
            raise RuntimeError(f"{info.num_workers} DataLoader workers for {len(self.plans)} streams")
        yield from self.reader.batches(self.plans[info.id])
