"""Metrics of a training run, exported by rank 0 of a ``trainer: ray`` run, and the rank-0 observer that
reports them with the driver's console records.

Two exporters, the same series:

* **Ray's metrics system** (always, inside a Ray worker): ``ray.util.metrics`` objects, reported to the
  node's Ray metrics agent and served with Ray's own series on the node's metrics export port
  (``ray start --metrics-export-port``; KubeRay: port ``metrics`` 8080). Ray's Prometheus service
  discovery (``/tmp/ray/prom_metrics_service_discovery.json``) and the PodMonitor in
  ``deploy/monitoring/`` find them on whichever node rank 0 runs, also after a restart moved it. Ray
  prefixes the names with ``ray_``:

  ==========================================  =========  ==========================================
  ``ray_unimat_train_step``                   gauge      optimizer steps done
  ``ray_unimat_train_total_steps``            gauge      ``train.steps`` of the run
  ``ray_unimat_train_loss``                   gauge      training loss (mean over the logging window)
  ``ray_unimat_train_samples_per_second``     gauge      crystals/s over all ranks
  ``ray_unimat_train_slots_per_second``       gauge      tensor slots (L*H*W per crystal) per second
  ``ray_unimat_train_data_wait_seconds_total``  counter  rank-0 time waiting for its next batch
  ``ray_unimat_train_step_seconds``           histogram  optimizer-step wall time
  ``ray_unimat_train_gpu_memory_bytes``       gauge      peak CUDA memory on rank 0 (0 on CPU)
  ``ray_unimat_train_world_size``             gauge      workers in the current worker group
  ``ray_unimat_train_restarts``               gauge      times this run resumed from a checkpoint;
                                                         carried in the checkpoint, so it is right
                                                         after rank 0 moved to another node
  ==========================================  =========  ==========================================

  Every series carries the tag ``run`` (the Ray Train run name); Ray adds ``NodeAddress``,
  ``WorkerId`` and ``SessionName``.

* **prometheus-client** on a fixed port (``distributed.metrics_port``; off by default): the same
  series from the same table (``SERIES``), named without ``ray_``, scraped at ``http://HOST:PORT/metrics`` of rank 0's node - handy
  on one machine, but the port moves with rank 0.
"""
from __future__ import annotations

import logging
from typing import Any

from .series import Series, client_series, ray_series

log = logging.getLogger(__name__)

STEP_BUCKETS = (0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100)

# exported by Ray as ray_<name>, and by the prometheus-client exporter as <name>
SERIES = {
    "unimat_train_step": Series("gauge", "optimizer steps done"),
    "unimat_train_total_steps": Series("gauge", "train.steps of the run"),
    "unimat_train_loss": Series("gauge", "training loss (mean over the logging window)"),
    "unimat_train_samples_per_second": Series("gauge", "crystals/s over all ranks"),
    "unimat_train_slots_per_second": Series("gauge", "L*H*W tensor slots/s over all ranks"),
    "unimat_train_data_wait_seconds_total": Series("counter", "rank-0 time waiting for batches, seconds"),
    "unimat_train_step_seconds": Series("histogram", "optimizer step wall time, seconds", boundaries=STEP_BUCKETS),
    "unimat_train_gpu_memory_bytes": Series("gauge", "peak CUDA memory allocated on rank 0"),
    "unimat_train_world_size": Series("gauge", "workers in the current worker group"),
    "unimat_train_restarts": Series("gauge", "times this run resumed from a checkpoint"),
}


class TrainMetrics:
    """Rank 0's series, from the one table ``SERIES``. ``port``: the prometheus-client exporter (None =
    off); ``ray_metrics``: export through Ray's metrics agent when running inside Ray."""

    def __init__(self, port: int | None, host: str, run: str, *, ray_metrics: bool = False) -> None:
        self.exporters: list[dict[str, Any]] = []
        self.server = None
        if ray_metrics and (ray := ray_series(SERIES, {"run": run}, "unimat_train_")) is not None:
            self.exporters.append(ray)
        if port is not None:
            from prometheus_client import CollectorRegistry, start_http_server

            self.registry = CollectorRegistry()
            self.exporters.append(client_series(SERIES, {"run": run}, "unimat_train_", self.registry))
            self.server, self.thread = start_http_server(port, addr=host, registry=self.registry)
            log.info("Prometheus metrics on http://%s:%d/metrics", host, port)

    def _set(self, **values: float) -> None:
        for series in self.exporters:
            for key, value in values.items():
                series[key].set(value)

    def started(self, *, world_size: int, total_steps: int, step: int, resumes: int) -> None:
        """A worker group started (``resumes``: times the run resumed from a checkpoint, this start included;
        carried in the checkpoint, so a gauge that is right on whichever node rank 0 now runs)."""
        self._set(world_size=world_size, total_steps=total_steps, step=step, restarts=resumes)

    def observe_step(self, *, step: int, seconds: float, data_wait: float, samples_per_step: int, slots: int) -> None:
        if not self.exporters:
            return
        import torch

        gpu = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
        self._set(step=step, gpu_memory_bytes=gpu)
        if seconds > 0:
            self._set(samples_per_second=samples_per_step / seconds, slots_per_second=samples_per_step * slots / seconds)
        for series in self.exporters:
            series["step_seconds"].observe(seconds)
            if data_wait > 0:
                series["data_wait_seconds_total"].inc(data_wait)

    def observe_loss(self, loss: float) -> None:
        self._set(loss=loss)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


class RankZeroReporting:
    """Trainer observer (``training.loop.TrainObserver``) of rank 0: Ray/Prometheus metrics per step and per
    logged record, the record on the driver's console (``progress.ProgressReporter``) and one log line in the
    worker's log."""

    def __init__(self, metrics: TrainMetrics, progress, run_name: str) -> None:
        self.metrics, self.progress, self.run_name = metrics, progress, run_name

    def on_step(self, trainer, seconds: float, data_wait: float) -> None:
        if trainer.is_main:
            s = trainer.spec
            self.metrics.observe_step(step=trainer.state.step, seconds=seconds, data_wait=data_wait,
                                      samples_per_step=trainer.cfg.train.global_batch_size, slots=s.L * s.H * s.W)

    def on_log(self, trainer, record: dict[str, Any]) -> None:
        self.metrics.observe_loss(float(record["loss"]))
        if self.progress is not None:
            self.progress.step(record)
        log.info("run=%s step=%d loss=%.5f lr=%.3g samples/s=%.1f", self.run_name, record["step"], record["loss"],
                 record.get("lr", float("nan")), record.get("samples_per_s", float("nan")))
