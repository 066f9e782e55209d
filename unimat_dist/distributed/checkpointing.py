"""Ray Train's side of a DeepSpeed checkpoint (``training.deepspeed_checkpoint`` has the layout, the
integrity checks and the restore): every rank writes its part into a temp folder and reports it with
``ray.train.report``, and a (re)started worker finds the checkpoint to resume (``resume_point``)."""
from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from unimat_dist.training import deepspeed_checkpoint as dsc

log = logging.getLogger(__name__)


@contextlib.contextmanager
def resume_point(storage_path: str, run_name: str, storage_options: dict | None, *, rank: int, world_size: int,
                 local_rank: int, ray_checkpoint=None):
    """The checkpoint a (re)started worker resumes, as ``RayCheckpointer``'s ``source``: (verified private
    copy, its meta.json, DeepSpeed universal checkpoint or None), or None for a fresh run.

    The newest complete checkpoint in the run's storage wins over Ray's registered one (``ray_checkpoint``,
    the fallback when storage cannot be listed; see ``deepspeed_checkpoint.latest_complete``). Everything that loads it (DeepSpeed,
    ``ds_to_universal``, the loop state) reads this rank's ``verified_copy``, never the shared storage; the
    copies are deleted on exit, so resume inside the ``with``. On another world size the node's local rank
    0 converts the copy to DeepSpeed's universal format, keyed by the original checkpoint so that the
    node's ranks share it."""
    import torch.distributed as dist

    with contextlib.ExitStack() as cleanup:  # on exit, newest first: the verified copy, Ray's folder, the download
        found = dsc.latest_complete(storage_path, run_name, storage_options)
        if found is not None:
            ckpt_dir, downloaded = dsc.local_copy(found[0], storage_options)
            if downloaded is not None:
                cleanup.callback(shutil.rmtree, downloaded, ignore_errors=True)
        elif ray_checkpoint is not None:
            ckpt_dir = cleanup.enter_context(ray_checkpoint.as_directory())
        else:
            yield None
            return
        verified = tempfile.mkdtemp(prefix=f"unimat-verified-r{rank}-")
        cleanup.callback(shutil.rmtree, verified, ignore_errors=True)
        meta = dsc.verified_copy(ckpt_dir, verified)
        universal = None
        if meta["world_size"] != world_size:
            out = dsc.universal_dir(ckpt_dir)
            if local_rank == 0:
                universal = dsc.convert_to_universal(verified, out)
            dist.barrier()
            universal = universal or (str(out), f"{dsc.DS_TAG}_universal")
        yield verified, meta, universal


class RayCheckpointer:
    """The ``Checkpointer`` of a Ray Train worker: ``deepspeed_checkpoint.write_checkpoint`` into a temp folder,
    reported to Ray Train; ``resume`` restores from a ``verified_copy``.

    ``source`` is (verified copy, its meta.json, DeepSpeed universal checkpoint or None) when the worker
    found a checkpoint to resume (``resume_point``), else None. ``resumes`` counts the run's resumes, this
    one included."""

    def __init__(self, run_name: str, source: tuple[str, dict[str, Any], tuple[str, str] | None] | None = None) -> None:
        self.run_name, self.source = run_name, source
        self.resumes = 0

    def save(self, trainer) -> str:
        import ray.train

        from unimat_dist.inference.checkpoint import step_name

        step = trainer.state.step
        tmp = Path(tempfile.mkdtemp(prefix=f"unimat-ckpt-{step:08d}-r{trainer.rank}-"))
        try:
            metrics = dsc.write_checkpoint(trainer, tmp, self.run_name, self.resumes)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if trainer.is_main:
            log.info("run=%s checkpoint at step %d reported", self.run_name, step)
        return step_name(step)

    def resume(self, trainer) -> None:
        if self.source is not None:
            self.resumes = dsc.restore(trainer, *self.source)
            self.source = None
