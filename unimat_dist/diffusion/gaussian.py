"""`GaussianDiffusion`: the DDPM forward process around a denoiser, and its training loss.

The module owns the schedule as (non-persistent) buffers, so its ``state_dict`` holds only the
denoiser's weights (under the ``denoiser.`` prefix); ``forward`` returns the loss, which is what a
training engine (plain PyTorch, DeepSpeed) wraps.

Loss: epsilon-prediction MSE on positions plus ``lattice_loss_weight`` x epsilon-MSE on the lattice
(default 0.1: the position term is a mean over hundreds of mostly-null slots, the lattice term over 6
numbers; with weight 1 the lattice dominates the shared network's gradient and atoms learn slowly).
How position errors are averaged (``loss_weighting``); every option weighs a slot by what the model
can see (the spec and the condition), never by whether the slot truly holds an atom, because weights
that depend on the target bias the optimal denoiser (up-weighting atom slots teaches it to predict
atoms where there are none):
    uniform    plain mean over every entry of the (L, H, W, 3) tensor (the paper's objective).
    allowed    mean over the slots of cells that can hold an element of the spec; the always-empty
               cells (44 of the 162 of the full table; the rest of a reduced grid) are ignored, since
               decoding drops them anyway.
    condition  mean over the slots the composition condition leaves open (``Condition.allowed_slots``):
               the spec's cells when unconditional, the requested elements' cells with element types,
               exactly the atom slots with exact counts. The slots the sampler pins to null are not
               trained, so more of the gradient goes to the atoms.

``positions`` picks the space the positions diffuse in (``positions.py``): ``linear`` (model space, 3
channels) or ``circle`` (cos/sin of each fractional coordinate, 6 channels). The denoiser sees and
predicts noise in that space. A denoiser with a ``composition`` submodule (the transformer's prior over
element counts) adds ``composition_loss_weight`` x its NLL per crystal (nats) to the loss, learned on the
compositions of the same batches.
"""
from __future__ import annotations

import torch
from torch import nn

from unimat_dist.model.conditioning import Condition

from .positions import PositionSpace
from .schedules import make_betas

LOSS_WEIGHTINGS = ("uniform", "allowed", "condition")


class GaussianDiffusion(nn.Module):
    def __init__(
        self,
        denoiser: nn.Module,
        allowed_cells: torch.Tensor,
        timesteps: int = 1000,
        schedule: str = "linear",
        loss_weighting: str = "allowed",
        lattice_loss_weight: float = 0.1,
        positions: str = "linear",
        composition_loss_weight: float = 0.01,
    ) -> None:
        super().__init__()
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {loss_weighting!r}")
        self.denoiser = denoiser
        self.timesteps = int(timesteps)
        self.schedule = schedule
        self.loss_weighting = loss_weighting
        self.lattice_loss_weight = float(lattice_loss_weight)
        self.space = PositionSpace(positions)
        self.composition_loss_weight = float(composition_loss_weight)
        betas = make_betas(schedule, timesteps)
        abar = torch.cumprod(1 - betas, 0)
        buffers = {
            "betas": betas,
            "alphas_cumprod": abar,
            "sqrt_alphas_cumprod": abar.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1 - abar).sqrt(),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.float(), persistent=False)
        # float64 copy for samplers: their coefficients are formed from ratios of abar.
        self.register_buffer("alphas_cumprod_f64", abar, persistent=False)
        self.register_buffer("allowed_cells", torch.as_tensor(allowed_cells, dtype=torch.bool), persistent=False)

    def config(self) -> dict:
        """The constructor arguments besides the denoiser and the spec's cells (stored in checkpoints)."""
        return {
            "timesteps": self.timesteps,
            "schedule": self.schedule,
            "loss_weighting": self.loss_weighting,
            "lattice_loss_weight": self.lattice_loss_weight,
            "positions": self.space.name,
            "composition_loss_weight": self.composition_loss_weight,
        }

    @property
    def composition(self):
        """The denoiser's composition prior (``CompositionModel``) or None."""
        return getattr(self.denoiser, "composition", None)

    def slot_counts(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, H*W) atoms per cell of atom masks (B, L, H, W): the composition prior's input."""
        return mask.long().sum(1).flatten(1)

    # ------------------------------------------------------------------ forward process
    @staticmethod
    def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return v.reshape(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise, for any trailing shape."""
        return self._bcast(self.sqrt_alphas_cumprod[t], x0) * x0 + self._bcast(
            self.sqrt_one_minus_alphas_cumprod[t], x0
        ) * noise

    def position_weights(self, mask: torch.Tensor, cond: Condition | None = None) -> torch.Tensor:
        """(B, L, H, W) per-slot loss weights summing to 1 per sample (see the module doc)."""
        if self.loss_weighting == "uniform":
            return torch.full(mask.shape, 1.0 / mask[0].numel(), device=mask.device)
        allowed = self.allowed_cells.to(mask.device)
        if self.loss_weighting == "allowed":
            slots = allowed.expand_as(mask)
        else:
            if cond is None:
                raise ValueError("loss_weighting='condition' needs the batch's Condition")
            slots = cond.allowed_slots(allowed)
        w = slots.float()
        return w / w.flatten(1).sum(-1).clamp(min=1).reshape(-1, 1, 1, 1)

    def forward(
        self,
        x0: torch.Tensor,
        y0: torch.Tensor,
        mask: torch.Tensor,
        cond: Condition,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one batch: x0 (B, L, H, W, 3) and y0 (B, D) in model space, mask (B, L, H, W) of atoms.

        Timesteps and noise come from ``generator`` (for a deterministic validation loss) or torch's
        global RNG. Returns (loss, metrics); metrics are detached scalars.
        """
        b = x0.shape[0]
        x0 = self.space.to_diffusion(x0, mask)
        t = torch.randint(0, self.timesteps, (b,), device=x0.device, generator=generator)
        nx = torch.randn(x0.shape, device=x0.device, generator=generator)
        ny = torch.randn(y0.shape, device=y0.device, generator=generator)
        px, py = self.denoiser(self.q_sample(x0, t, nx), self.q_sample(y0, t, ny), t, cond)
        err = (px.float() - nx).square().mean(-1)  # (B, L, H, W)
        loss_x = (err * self.position_weights(mask, cond)).sum((1, 2, 3)).mean()
        loss_y = (py.float() - ny).square().mean()
        loss = loss_x + self.lattice_loss_weight * loss_y
        prior = self.composition
        if prior is not None:
            counts = self.slot_counts(mask)
            if self.training:  # validation batches must not widen the support
                prior.observe(counts)
            loss_c = prior(counts).mean()
            loss = loss + self.composition_loss_weight * loss_c
        with torch.no_grad():
            atoms = mask.float()
            metrics = {
                "loss": loss.detach(),
                "loss_positions": loss_x.detach(),
                "loss_lattice": loss_y.detach(),
                "loss_atom_slots": (err * atoms).sum() / atoms.sum().clamp(min=1),
            }
            if prior is not None:
                metrics["loss_composition"] = loss_c.detach()
        return loss, metrics
