"""What a running job tells its operator: Prometheus series through Ray's metrics system (``series``; the
training run's in ``training``, the ingest job's in ``data_pipeline.metrics``, the service's in
``deploy.metrics``) and the console of a ``trainer: ray`` run on its driver (``progress``). Ray is imported
on use; no project imports, so every layer may report."""
