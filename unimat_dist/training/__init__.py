"""Single-process training of the UniMat diffusion model (the loop the distributed trainer wraps).

    from unimat_dist.training import load_train_config, train_local
    result = train_local(load_train_config("cluster/jobs/train_tiny_cpu.yaml", ["train.steps=100"]))

``unimat_dist.launch.run_training`` runs a config with either trainer (local or ``trainer: ray``).
"""
from .batches import Batcher, ModelBatch
from .checkpoint import CheckpointManager, RNGState
from .config import TrainConfig, load_train_config
from .data import EncodedSet, InMemorySource, compositions_of, iter_batches, load_encoded_split
from .ema import EMA
from .engine import Engine, LocalEngine, build_optimizer, resolve_autocast, resolve_device
from .loop import Trainer, TrainResult, TrainState
from .lr import lr_at
from .run import build_local_trainer, train_local
from .setup import RunSetup, build_diffusion, prepare_run, resolve_spec

__all__ = [
    "EMA",
    "Batcher",
    "CheckpointManager",
    "EncodedSet",
    "Engine",
    "InMemorySource",
    "LocalEngine",
    "ModelBatch",
    "RNGState",
    "RunSetup",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "Trainer",
    "build_diffusion",
    "build_local_trainer",
    "build_optimizer",
    "compositions_of",
    "iter_batches",
    "load_encoded_split",
    "load_train_config",
    "lr_at",
    "prepare_run",
    "resolve_autocast",
    "resolve_device",
    "resolve_spec",
    "train_local",
]
