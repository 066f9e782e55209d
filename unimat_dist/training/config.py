"""The typed config tree of a training run (YAML + ``section.key=value`` overrides; unknown keys are errors).

    cfg = load_train_config("cluster/jobs/train_tiny_cpu.yaml", ["train.steps=50"])

One dataclass per section; every default states its unit or allowed values. The whole tree is printed
at start, saved next to the run and stored in every checkpoint. The ``distributed`` section
(``distributed_config.py``) is read by ``trainer: ray`` only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from unimat_dist.config import ConfigError, load_config
from unimat_dist.model.config import TransformerConfig, UNetConfig
from unimat_dist.model.presets import ARCHS, PRESETS, TRANSFORMER_PRESETS

from .distributed_config import DistributedConfig

Split = Literal["train", "val", "test"]


@dataclass
class DataConfig:
    dataset: str = "perov_5"  # registry name: perov_5, carbon_24, mp_20 (bundled subset stands in), mp_20_subset, ...
    train_split: Split = "train"  # a missing official split is replaced by a bundled one (logged)
    val_split: Split = "val"
    limit_train: int | None = None  # use only the first N training rows (overfitting checks, smoke runs)
    limit_val: int | None = None  # first N validation rows
    max_atoms_per_element: int | None = None  # L; None = the data set's value (perov_5: 3, mp_20: 20, ...)
    coords: Literal["fractional", "cartesian"] = "fractional"
    elements: list[str] | None = None  # reduced chemical system; None = the data set's (carbon_24: [C], else full table)
    properties: list[str] = field(default_factory=list)  # property columns to condition on (e.g. [formation_energy_per_atom])
    cache_dir: str | None = None  # encoded-array cache; None = $UNIMAT_CACHE/encoded (~/.cache/unimat/encoded)
    manifest: str | None = None  # ingested shards (`unimat ingest` output: folder or manifest.json, file/s3/gs URI); replaces `dataset`'s CSVs
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options for `manifest` (endpoint_url, key, token, ...)
    shuffle_buffer: int = 2000  # shard reader shuffle buffer, samples per stream
    loader_workers: int = 0  # DataLoader worker processes per rank reading shards (0 = in the training process)
    skip_invalid: bool = True  # drop rows that cannot be encoded (count and ids logged) instead of failing
    # Measurement knob: read this rank's first N micro-batches once, then train on them again and again from
    # memory - the same tensors without the loading cost, to check that loading keeps up (bench/bench_scale.py).
    replay_batches: int | None = None

    def __post_init__(self) -> None:
        for name in ("limit_train", "limit_val", "replay_batches"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1 or null, got {v}")


@dataclass
class AugmentConfig:
    shuffle_slots: Literal["none", "atoms", "all"] = "atoms"  # permute slots within each element cell
    translate: bool = True  # random change of origin (fractional coordinates only)
    rotate: bool = True  # random rotation of atoms and lattice together (Cartesian coordinates only)


@dataclass
class ConditioningConfig:
    """How often each kind of composition conditioning is shown in training (probabilities, sum 1), and
    the classifier-free-guidance dropout of the properties."""

    p_unconditional: float = 0.2  # no composition at all
    p_element_types: float = 0.4  # element-type mask (H, W)
    p_exact_counts: float = 0.4  # exact-count mask (L, H, W)
    p_drop_properties: float = 0.1  # replace all properties of a sample by their null embeddings

    def __post_init__(self) -> None:
        ps = (self.p_unconditional, self.p_element_types, self.p_exact_counts)
        if any(p < 0 for p in ps) or abs(sum(ps) - 1.0) > 1e-6:
            raise ValueError(f"composition probabilities must be >= 0 and sum to 1, got {ps}")
        if not 0 <= self.p_drop_properties <= 1:
            raise ValueError(f"p_drop_properties must be in [0, 1], got {self.p_drop_properties}")


@dataclass
class ModelConfig:
    # unet: the paper's 3D U-Net over the whole tensor; transformer: atoms as tokens with periodic pair
    # features and a composition prior (docs/learning_core.md says why the released models use it).
    arch: Literal["unet", "transformer"] = "unet"
    preset: str = "tiny"  # tiny | small | base | large (unimat_dist/model/presets.py, one table per arch)
    overrides: dict[str, Any] = field(default_factory=dict)  # config fields replacing the preset's, e.g. {dropout: 0.1}

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"model.arch must be one of {ARCHS}, got {self.arch!r}")
        table = PRESETS if self.arch == "unet" else TRANSFORMER_PRESETS
        if self.preset not in table:
            raise ValueError(f"unknown model preset {self.preset!r} for arch {self.arch}; known: {', '.join(table)}")
        self.unet() if self.arch == "unet" else self.transformer()  # validate the overrides now

    def transformer(self) -> TransformerConfig:
        from unimat_dist.config import from_dict

        try:
            return from_dict(TransformerConfig, {**TRANSFORMER_PRESETS[self.preset].to_dict(), **self.overrides},
                             "model.overrides")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    def unet(self) -> UNetConfig:
        from unimat_dist.config import from_dict

        try:
            return from_dict(UNetConfig, {**PRESETS[self.preset].to_dict(), **self.overrides}, "model.overrides")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None


@dataclass
class DiffusionConfig:
    timesteps: int = 1000  # T
    schedule: Literal["linear", "cosine"] = "linear"
    loss_weighting: Literal["uniform", "allowed", "condition"] = "allowed"  # see unimat_dist/diffusion/gaussian.py
    # Weight of the lattice epsilon-MSE (a mean over D = 6 or 9 numbers) next to the positions' (a mean over
    # hundreds of mostly-null slots). At 1.0 the lattice dominates the shared network's gradient and the
    # atoms learn several times slower (docs/learning_core.md, "loss weights"); 0.1 measured best.
    lattice_loss_weight: float = 0.1
    # linear: noise on the model-space coordinates (the paper); circle: on (cos, sin) of each fractional
    # coordinate, periodic and origin-free (needs model.arch: transformer); see diffusion/positions.py.
    positions: Literal["linear", "circle"] = "linear"
    composition_loss_weight: float = 0.01  # weight of the composition prior's NLL (nats per crystal), if any


@dataclass
class OptimConfig:
    lr: float = 2e-4  # peak AdamW learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at train.steps
    warmup_steps: int = 500  # linear warmup from 0, optimizer steps
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0  # on conv/linear weights only
    grad_clip: float = 1.0  # max global grad norm; 0 = no clipping
    ema_decay: float = 0.9999  # EMA of the weights; warmed up as min(decay, (1 + n) / (10 + n))


@dataclass
class LoopConfig:
    steps: int = 10000  # optimizer steps
    global_batch_size: int = 64  # samples per optimizer step, over all ranks (invariant to world size)
    micro_batch_size: int | None = None  # samples per forward on one rank; None = global // world size
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int | None = None  # torch CPU threads; None = torch's default
    compile: bool = False  # torch.compile the denoiser
    log_every: int = 10  # steps between metric lines (rank 0)
    val_every: int = 500  # steps between validation losses; 0 = only at the end
    val_batches: int | None = 8  # validation batches per evaluation; null = the whole split
    ckpt_every: int = 1000  # steps between checkpoints; 0 = only at the end
    keep_checkpoints: int = 3  # newest training checkpoints kept (older ones deleted)
    resume: str = "auto"  # auto (latest checkpoint of this run if any) | never | path of a checkpoint
    progress: bool = True  # tqdm progress bar (rank 0)
    # sample quality while training (training/quality.py): every N steps, unconditional DDIM samples of the EMA
    # model scored against a validation subset (validity, coverage, atom-count/density EMD, shortest distance)
    quality_every: int = 0  # steps between checks; 0 = never
    quality_samples: int = 64  # crystals sampled per check
    quality_steps: int = 50  # DDIM steps of those samples
    quality_eta: float = 0.0  # their DDIM η and noise scale: sample as the model will be released (docs: Carbon-24)
    quality_noise_scale: float = 1.0
    quality_restart: list[int] | None = None  # [t, steps]: the release's restart pass (checked against T at build)
    quality_reference: int = 200  # validation crystals they are compared with (fingerprinted once)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.global_batch_size < 1:
            raise ValueError("steps and global_batch_size must be >= 1")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1 or null, got {self.micro_batch_size}")
        for name in ("quality_eta", "quality_noise_scale"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"train.{name} must be in [0, 1], got {getattr(self, name)}")
        from unimat_dist.diffusion.samplers import check_restart

        check_restart(self.quality_restart, None, "train.quality_restart")

    def grad_accum_steps(self, world_size: int = 1) -> tuple[int, int]:
        """(micro batch, accumulation steps) with micro * accum * world_size == global_batch_size."""
        micro = self.micro_batch_size or self.global_batch_size // world_size
        if micro < 1 or self.global_batch_size % (micro * world_size):
            raise ValueError(
                f"global_batch_size {self.global_batch_size} is not a multiple of micro_batch_size {micro} x "
                f"world size {world_size}"
            )
        return micro, self.global_batch_size // (micro * world_size)


@dataclass
class TrainConfig:
    trainer: Literal["local", "ray"] = "local"  # local: this process; ray: Ray Train + DeepSpeed
    out_dir: str = "out/train"  # run directory: config, metrics, plots, checkpoints
    checkpoint_dir: str | None = None  # local path or fsspec URI; None = <out_dir>/checkpoints
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)  # used by trainer: ray

    def checkpoint_path(self) -> str:
        return self.checkpoint_dir or f"{self.out_dir.rstrip('/')}/checkpoints"


def load_train_config(path=None, overrides: list[str] | None = None) -> TrainConfig:
    return load_config(TrainConfig, path, overrides)
