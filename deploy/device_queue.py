"""Merge the ``@serve.batch`` calls that wait for the device into one sampling run.

``@serve.batch`` cuts a batch as soon as ``batch_wait_timeout_s`` has passed after its first request,
whether or not the device is free; with one device, Serve then queues the next batches behind the
running one, each of them small (measured: mean 2 requests per batch at 8 concurrent clients). This
queue fixes that: every batch call is handed to ``submit``; while a run is on the device the calls
accumulate, and the next run takes all of them, up to ``max_requests`` requests and ``max_rows``
samples (a call is never split; an oversized call runs alone). So the device never idles while
requests wait, and the batches grow with the load. ``max_requests=1`` is the unbatched baseline.

Pure asyncio (no Ray), one instance per replica; ``run`` is a blocking function executed in
``executor`` (the event loop stays free for new requests and health checks).
"""
from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Any, Callable, Sequence


class DeviceQueue:
    def __init__(self, run: Callable[[list[Any]], list[Any]], executor: Executor, *, max_requests: int,
                 max_rows: int, rows_of: Callable[[Any], int]) -> None:
        self.run, self.executor = run, executor
        self.max_requests, self.max_rows, self.rows_of = max_requests, max_rows, rows_of
        self._pending: list[tuple[list[Any], asyncio.Future]] = []
        self._drainer: asyncio.Task | None = None

    async def submit(self, items: Sequence[Any]) -> list[Any]:
        """Results of ``run`` for ``items`` (in order), possibly computed together with other calls'."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append((list(items), future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[list[Any], asyncio.Future]]:
        """The calls of the next run: oldest first, within the request and row limits."""
        taken, requests, rows = [], 0, 0
        while self._pending:
            items, fut = self._pending[0]
            n, r = len(items), sum(self.rows_of(i) for i in items)
            if taken and (requests + n > self.max_requests or rows + r > self.max_rows):
                break
            taken.append(self._pending.pop(0))
            requests, rows = requests + n, rows + r
        return taken

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            calls = [(items, fut) for items, fut in self._take() if not fut.cancelled()]
            if not calls:
                continue
            merged = [item for items, _ in calls for item in items]
            try:
                results = await loop.run_in_executor(self.executor, self.run, merged)
            except Exception as exc:  # every caller of this run gets the error
                for _, fut in calls:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            start = 0
            for items, fut in calls:
                if not fut.done():
                    fut.set_result(results[start:start + len(items)])
                start += len(items)
