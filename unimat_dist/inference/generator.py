"""Structure generation from an inference checkpoint.

    from unimat_dist.inference import load_generator
    g = load_generator("out/run/checkpoints")               # file, directory or fsspec URI
    structures = g.sample(64, composition="Fe2O3", exact_counts=True,
                          properties={"formation_energy_per_atom": -1.2}, guidance=1.0,
                          sampler="ddim", steps=100, seed=0, batch_size=256)

Batched serving mixes requests: ``SampleRequest`` per sample -> ``g.condition(requests)`` -> one
``Condition`` batch + per-sample guidance -> ``g.sample_condition(...)`` (one denoising loop per
sampler/steps group) -> raw arrays and/or pymatgen structures (None where nothing decodes).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from unimat_dist.diffusion import GaussianDiffusion, sample
from unimat_dist.diffusion.samplers import SampleOutput
from unimat_dist.model import Condition, PropertyScaler
from unimat_dist.representation import (
    Normalizer,
    UniMatSpec,
    UniMatTensor,
    count_mask,
    decode,
    element_mask,
    infer_mask,
)

from .checkpoint import autoguidance_summary, build_diffusion, load_inference_checkpoint, resolve_sampling

log = logging.getLogger(__name__)


@dataclass
class SampleRequest:
    """What one generated crystal should satisfy (all optional)."""

    composition: Any = None  # None | "Fe2O3" | {"Fe": 2, "O": 3} | pymatgen Composition
    exact_counts: bool = True  # True: exactly these atom counts; False: only these element types
    properties: Mapping[str, float] = field(default_factory=dict)  # raw units; omitted names use the null embedding
    guidance: float = 0.0  # classifier-free guidance weight w for the properties


@dataclass
class GeneratedBatch:
    """A finished reverse process in data units: everything ``to_structures`` needs (three arrays, so it
    crosses a process pipe cheaply); converted from model space once, in ``finish``."""

    positions: np.ndarray  # (B, L, H, W, 3) raw positions (fractional or Angstrom), nulls at -1
    mask: np.ndarray  # (B, L, H, W) bool atoms after the decoding rule / count constraint
    lattice: np.ndarray  # (B, D) raw lattice (a, b, c, alpha, beta, gamma) or matrix, clipped to physical ranges


class StructureGenerator:
    def __init__(
        self,
        diffusion: GaussianDiffusion,
        spec: UniMatSpec,
        normalizer: Normalizer,
        scaler: PropertyScaler,
        *,
        autocast_dtype: torch.dtype | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.diffusion = diffusion.eval()
        self.spec, self.normalizer, self.scaler = spec, normalizer, scaler
        self.autocast_dtype = autocast_dtype
        self.meta = meta or {}

    @property
    def precision(self) -> str:
        """``fp32``, ``bf16-autocast`` (CUDA) or ``bf16-weights`` (CPU): how the network runs."""
        if self.autocast_dtype is not None:
            return "bf16-autocast"
        weights = next(self.diffusion.denoiser.parameters()).dtype
        return "bf16-weights" if weights == torch.bfloat16 else "fp32"

    @property
    def device(self) -> torch.device:
        return self.diffusion.alphas_cumprod.device

    @property
    def property_names(self) -> tuple[str, ...]:
        return self.scaler.names

    @property
    def sampling_defaults(self) -> dict[str, Any]:
        """The sampler settings the checkpoint was released with (``"sampling"``; {} when it has none)."""
        return dict(self.meta.get("sampling") or {})

    @property
    def distinct_compositions(self) -> bool:
        """Whether compositions drawn from the prior for one call avoid repeats
        (``CompositionModel.sample_distinct``): the checkpoint's ``distinct_compositions`` sampling default,
        else off."""
        return bool(self.sampling_defaults.get("distinct_compositions", False))

    def sampling_settings(self, sampler: str | None = None, steps: int | None = None, eta: float | None = None,
                          noise_scale: float | None = None, restart=None) -> dict[str, Any]:
        """{sampler, steps, eta, noise_scale, restart} to sample with: each given value, else the checkpoint's
        default, else the library's (``checkpoint.resolve_sampling``)."""
        return resolve_sampling(self.sampling_defaults, int(self.diffusion.timesteps), sampler, steps, eta,
                                noise_scale, restart)

    # ------------------------------------------------------------------ conditioning
    def composition_array(self, composition, exact_counts: bool) -> np.ndarray:
        """(L, H, W) float composition channel of one request (zeros for None); ValueError for bad input."""
        if composition is None:
            return np.zeros(self.spec.shape[:3], dtype=np.float32)
        if exact_counts:
            return count_mask(composition, self.spec)
        return np.broadcast_to(element_mask(composition, self.spec), self.spec.shape[:3]).astype(np.float32)

    @property
    def composition_prior(self):
        """The model's prior over compositions (``CompositionModel``), or None (the U-Net)."""
        return self.diffusion.composition

    def drop_weights(self) -> None:
        """Free the denoiser's weights (moved to the meta device) and keep its composition prior: what a
        process needs that only validates requests, draws their compositions and decodes results while the
        denoising loop runs elsewhere (the Serve app's sampling process)."""
        from unimat_dist.diffusion.autoguidance import networks

        for den in networks(self.diffusion.denoiser):
            prior = getattr(den, "composition", None)
            if prior is not None:
                den.composition = None
            den.to("meta")
            if prior is not None:
                den.composition = prior

    def draws_composition(self, request: SampleRequest) -> bool:
        """Whether this model draws the counts of ``request`` from its composition prior: no composition, or
        element types only, with a model that has a prior (composition first, docs/learning_core.md)."""
        return self.composition_prior is not None and (request.composition is None or not request.exact_counts)

    def _draw_counts(self, composition, n: int, generator: torch.Generator, distinct: bool = False) -> np.ndarray:
        """(n, L, H, W) exact-count compositions drawn from the prior: any (``composition`` None) or with
        exactly the elements of ``composition``; ``distinct``: no composition twice while the prior has others."""
        prior = self.composition_prior
        required = None
        if composition is not None:
            types = element_mask(composition, self.spec).reshape(-1).astype(bool)
            unseen = types & ~prior.seen.cpu().numpy()
            if unseen.any():
                z = self.spec.z_at_cell.reshape(-1)[unseen]
                raise ValueError(f"element(s) with Z={sorted(int(v) for v in z)} never appear in this model's "
                                 "training data; give exact counts to place them anyway")
            required = torch.as_tensor(types, device=prior.seen.device)[None].expand(n, -1)
        draw = prior.sample_distinct if distinct else prior.sample
        counts = draw(n, generator=generator, required=required).cpu().numpy()  # (n, H*W)
        L, H, W = self.spec.shape[:3]
        slots = np.arange(L)[None, :, None]
        return (slots < counts.reshape(n, 1, H * W)).reshape(n, L, H, W).astype(np.float32)

    def condition(self, requests: Sequence[SampleRequest], seed: int | None = 0,
                  distinct: bool | None = None) -> tuple[Condition, torch.Tensor]:
        """(Condition, guidance (B,)) for a list of per-sample requests.

        With a composition prior, requests without exact counts get counts drawn from it (one per row,
        from a generator seeded with ``seed``) and become exact-count conditions. ``distinct``: identical
        requests get different compositions while the prior has them (None: ``distinct_compositions``)."""
        if not requests:
            raise ValueError("no sample requests")
        comps, exact, values, masks, w = [], [], [], [], []
        cache: dict[tuple, np.ndarray] = {}
        drawn: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            key = (repr(r.composition), bool(r.exact_counts))
            try:
                if self.draws_composition(r):
                    drawn.setdefault(key, []).append(i)
                    if key not in cache:  # validate the elements now; counts are drawn below
                        cache[key] = self.composition_array(r.composition, r.exact_counts)
                elif key not in cache:
                    cache[key] = self.composition_array(r.composition, r.exact_counts)
                v, m = self.scaler.transform(dict(r.properties or {}), 1)
            except ValueError as exc:
                raise ValueError(f"request {i}: {exc}") from None
            if not np.isfinite(r.guidance):
                raise ValueError(f"request {i}: guidance must be finite, got {r.guidance}")
            comps.append(cache[key])
            exact.append(bool(r.exact_counts) and r.composition is not None)
            values.append(v[0])
            masks.append(m[0])
            w.append(float(r.guidance))
        if drawn:
            distinct = self.distinct_compositions if distinct is None else bool(distinct)
            gen = torch.Generator(device=self.composition_prior.seen.device)
            gen.manual_seed(int(seed) if seed is not None else torch.seed())
            for key, rows in drawn.items():
                try:
                    counts = self._draw_counts(requests[rows[0]].composition, len(rows), gen, distinct)
                except ValueError as exc:
                    raise ValueError(f"request {rows[0]}: {exc}") from None
                for j, i in enumerate(rows):
                    comps[i], exact[i] = counts[j], True
        p = len(self.scaler.names)
        cond = Condition(
            torch.from_numpy(np.stack(comps)),
            torch.tensor(exact, dtype=torch.bool),
            torch.from_numpy(np.stack(values)).reshape(len(requests), p),
            torch.from_numpy(np.stack(masks)).reshape(len(requests), p),
        )
        return cond, torch.tensor(w, dtype=torch.float32)

    # ------------------------------------------------------------------ sampling
    def sample_condition(
        self,
        cond: Condition,
        guidance: torch.Tensor | float = 0.0,
        *,
        sampler: str = "ddim",
        steps: int | None = None,
        eta: float = 0.0,
        noise_scale: float = 1.0,
        restart: tuple[int, int] | None = None,
        seed: int | None = 0,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> GeneratedBatch:
        """One denoising loop over a whole batch of conditions; returns raw arrays (no size limit here:
        the caller chunks)."""
        if generator is None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seed if seed is not None else torch.seed())
        out = sample(
            self.diffusion, cond, guidance, sampler=sampler, steps=steps, eta=eta, noise_scale=noise_scale,
            restart=restart, generator=generator, autocast_dtype=self.autocast_dtype, progress=progress,
        )
        return self.finish(out)

    def finish(self, out: SampleOutput) -> GeneratedBatch:
        """A finished reverse process in data units (positions, the atoms the decoding rule or the count
        constraint keeps, lattices): the one conversion out of model space."""
        decode_mask = torch.where(
            out.exact_atoms.any((1, 2, 3))[:, None, None, None], out.exact_atoms, infer_mask(out.positions) & out.allowed
        )
        pos, mask = self.normalizer.positions_from_model(out.positions.detach().float().cpu().numpy().astype(np.float64),
                                                         decode_mask.cpu().numpy())
        lat = self.normalizer.lattice_from_model(out.lattice.detach().float().cpu().numpy().astype(np.float64))
        return GeneratedBatch(pos, mask & self.spec.allowed_cells[None, None], lat)

    def to_structures(self, batch: GeneratedBatch) -> list:
        """pymatgen structures of a generated batch (None where no atom is left)."""
        return [decode(UniMatTensor(p, m, lat), self.spec) if m.any() else None
                for p, m, lat in zip(batch.positions, batch.mask, batch.lattice)]

    def sample_requests(
        self,
        requests: Sequence[SampleRequest],
        *,
        sampler: str = "ddim",
        steps: int | None = None,
        eta: float = 0.0,
        noise_scale: float = 1.0,
        restart: tuple[int, int] | None = None,
        seed: int | None = 0,
        batch_size: int = 256,
        progress: bool = False,
        distinct: bool | None = None,
    ) -> list:
        """Structures for a list of (possibly different) requests, ``batch_size`` per denoising loop
        (``distinct``: see ``condition``)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        cond, w = self.condition(requests, seed=seed, distinct=distinct)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed if seed is not None else torch.seed())
        structures: list = []
        chunks = range(0, len(requests), batch_size)
        if progress and len(chunks) > 1:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc="batches")
        for start in chunks:
            rows = slice(start, start + batch_size)
            batch = self.sample_condition(
                cond[rows], w[rows], sampler=sampler, steps=steps, eta=eta, noise_scale=noise_scale,
                restart=restart, generator=generator, progress=progress,
            )
            structures.extend(self.to_structures(batch))
        return structures

    def sample(
        self,
        num: int,
        composition=None,
        exact_counts: bool = True,
        properties: Mapping[str, float] | None = None,
        guidance: float = 0.0,
        *,
        sampler: str = "ddim",
        steps: int | None = None,
        eta: float = 0.0,
        noise_scale: float = 1.0,
        restart: tuple[int, int] | None = None,
        seed: int | None = 0,
        batch_size: int = 256,
        progress: bool = False,
        distinct: bool | None = None,
    ) -> list:
        """``num`` structures under one request (see ``SampleRequest`` for the arguments; ``distinct``:
        see ``condition``)."""
        if num < 1:
            raise ValueError(f"num must be >= 1, got {num}")
        req = SampleRequest(composition, exact_counts, dict(properties or {}), guidance)
        return self.sample_requests(
            [req] * num, sampler=sampler, steps=steps, eta=eta, noise_scale=noise_scale, restart=restart, seed=seed,
            batch_size=batch_size, progress=progress, distinct=distinct,
        )


def load_generator(
    path: str, device: str | torch.device | None = None, precision: str = "auto",
    storage_options: dict[str, Any] | None = None, autoguidance: float | None = None,
) -> StructureGenerator:
    """A generator from an inference checkpoint (file, run/checkpoint directory, or fsspec URI reached with
    ``storage_options``: endpoint, keys; see ``unimat_dist.storage``).

    ``device`` defaults to CUDA when available; ``precision`` auto = bf16 autocast on CUDA, fp32 on CPU;
    ``bf16`` on a CPU casts the network's weights to bf16 (no autocast), the fast path on CPUs with
    AMX / AVX512-BF16 (``StructureGenerator.precision`` says which one is in use). ``autoguidance``: the
    weight of the checkpoint's guide network (None: the checkpoint's own, 0: off; ``diffusion/autoguidance.py``).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    payload = load_inference_checkpoint(path, map_location="cpu", storage_options=storage_options)
    diffusion = build_diffusion(payload, device, autoguidance)
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    amp = None
    if bf16 and device.type == "cpu":
        # bf16 weights rather than autocast: on CPUs with AMX/AVX512-BF16 the convolutions run ~2-6x
        # faster in bf16, and autocast's per-op casts cost more than they save (bench/bench_serve.py).
        # Norm statistics still accumulate in fp32 inside the kernels; the sampler state stays fp32.
        diffusion.denoiser.to(torch.bfloat16)
    elif bf16:
        amp = torch.bfloat16
    meta = {k: payload.get(k) for k in ("path", "step", "weights", "train_config", "created", "unimat_dist_version",
                                        "sampling")}
    meta["autoguidance"] = autoguidance_summary(payload, autoguidance)
    log.info("loaded %s (step %s, %s weights) on %s", payload["path"], payload.get("step"), payload.get("weights"), device)
    if meta["autoguidance"]:
        log.info("autoguidance: weight %g against the step-%s network (two forwards per step)",
                 meta["autoguidance"]["weight"], meta["autoguidance"]["guide_step"])
    return StructureGenerator(
        diffusion,
        UniMatSpec.from_dict(payload["spec"]),
        Normalizer.from_dict(payload["normalizer"]),
        PropertyScaler.from_dict(payload["properties"]),
        autocast_dtype=amp,
        meta=meta,
    )
