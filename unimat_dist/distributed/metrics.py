"""Prometheus metrics of a distributed training run, exported by rank 0 (prometheus-client).

    unimat_train_step                      optimizer steps done
    unimat_train_loss                      training loss (mean over the last logging window)
    unimat_train_samples_per_second        crystals per second over all ranks
    unimat_train_slots_per_second          tensor slots (L*H*W per crystal) per second: the tokens/s analogue
    unimat_train_data_wait_seconds_total   time rank 0 spent waiting for its next batch
    unimat_train_step_seconds              histogram of optimizer-step wall time
    unimat_train_gpu_memory_bytes          peak CUDA memory allocated on rank 0 (0 on CPU)
    unimat_train_world_size                workers in the current worker group
    unimat_train_restarts_total            times this run resumed from a checkpoint

Every series carries the label ``run`` (the Ray Train run name). Scrape ``http://HOST:PORT/metrics``.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class TrainMetrics:
    def __init__(self, port: int | None, host: str, run: str) -> None:
        self.enabled = port is not None
        if not self.enabled:
            return
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

        self.registry = CollectorRegistry()
        labels = ["run"]
        r = self.registry
        self.step = Gauge("unimat_train_step", "optimizer steps done", labels, registry=r).labels(run)
        self.loss = Gauge("unimat_train_loss", "training loss", labels, registry=r).labels(run)
        self.samples = Gauge("unimat_train_samples_per_second", "crystals/s over all ranks", labels, registry=r).labels(run)
        self.slots = Gauge("unimat_train_slots_per_second", "L*H*W tensor slots/s over all ranks", labels, registry=r).labels(run)
        self.data_wait = Counter("unimat_train_data_wait_seconds", "rank-0 time waiting for batches", labels, registry=r).labels(run)
        self.step_time = Histogram(
            "unimat_train_step_seconds", "optimizer step wall time", labels, registry=r,
            buckets=(0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100),
        ).labels(run)
        self.gpu_mem = Gauge("unimat_train_gpu_memory_bytes", "peak CUDA memory on rank 0", labels, registry=r).labels(run)
        self.world = Gauge("unimat_train_world_size", "workers", labels, registry=r).labels(run)
        self.restarts = Counter("unimat_train_restarts", "resumes from checkpoint", labels, registry=r).labels(run)
        self.server, self.thread = start_http_server(port, addr=host, registry=r)
        log.info("Prometheus metrics on http://%s:%d/metrics", host, port)

    def observe_step(self, *, step: int, seconds: float, data_wait: float, samples_per_step: int, slots: int) -> None:
        if not self.enabled:
            return
        import torch

        self.step.set(step)
        self.step_time.observe(seconds)
        self.data_wait.inc(data_wait)
        if seconds > 0:
            self.samples.set(samples_per_step / seconds)
            self.slots.set(samples_per_step * slots / seconds)
        if torch.cuda.is_available():
            self.gpu_mem.set(torch.cuda.max_memory_allocated())

    def observe_loss(self, loss: float) -> None:
        if self.enabled:
            self.loss.set(loss)

    def close(self) -> None:
        if self.enabled:
            self.server.shutdown()
            self.server.server_close()
