"""`UniMatUNet`: the denoiser, a conditional 3D U-Net over the UniMat tensor read as a video.

Layout: the L slots are the "time" axis, the H x W periodic table the image plane, the 3 coordinates
the input channels; internally (B, C, L, H, W).

Inputs (all at diffusion step t):
    x (B, L, H, W, 3)  noisy positions in model space
    lattice (B, D)     noisy lattice in model space (D = 6 or 9)
    t (B,)             integer timesteps
    cond               ``Condition``: composition mask channels, standardised properties + mask
Outputs: predicted noise for both, (B, L, H, W, 3) and (B, D).

How the lattice is diffused jointly with the positions (the paper concatenates it to the atom
locations): the noisy lattice enters twice, (1) broadcast to D constant input channels next to the
coordinates, so every convolution sees it, and (2) through an MLP added to the conditioning vector that
modulates every residual block. Its noise is predicted by a small MLP head on the mean-pooled features
of the last up-level and of the bottleneck, concatenated with the conditioning vector.

Which element a cell stands for and which slot a channel is in are not visible to a translation-
equivariant convolution, so learned cell (H x W) and slot (L) embeddings are added after the first
convolution.
"""
from __future__ import annotations

from typing import Any

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from .attention import SpatialSlotAttention
from .blocks import Conv3x3, Downsample, ResBlock, Upsample, adamw_groups, group_norm
from .conditioning import Condition
from .config import UNetConfig
from .embeddings import PropertyEmbedding, TimestepEmbedding


class Stage(nn.Module):
    """A residual block, optionally followed by spatial + slot attention."""

    def __init__(self, block: ResBlock, attn: SpatialSlotAttention | None) -> None:
        super().__init__()
        self.block = block
        self.attn = attn

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.block(x, emb)
        return self.attn(x) if self.attn is not None else x


class UniMatUNet(nn.Module):
    def __init__(self, cfg: UNetConfig, shape: tuple[int, int, int], lattice_dim: int, num_properties: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.shape = tuple(int(s) for s in shape)
        self.lattice_dim = int(lattice_dim)
        self.num_properties = int(num_properties)
        L, H, W = self.shape
        dims = [cfg.dim * m for m in cfg.dim_mults]
        emb_dim = cfg.dim * cfg.emb_mult

        def stage(c_in: int, c_out: int, attn: bool) -> Stage:
            block = ResBlock(c_in, c_out, emb_dim, cfg.conv, cfg.dropout)
            return Stage(block, SpatialSlotAttention(c_out, cfg.attn_heads, cfg.attn_head_dim) if attn else None)

        self.init_conv = Conv3x3(3 + 2 + lattice_dim, dims[0], cfg.conv)
        self.cell_emb = nn.Parameter(torch.randn(dims[0], 1, H, W) * 0.02)
        self.slot_emb = nn.Parameter(torch.randn(dims[0], L, 1, 1) * 0.02)
        self.time_emb = TimestepEmbedding(dims[0], emb_dim)
        self.lattice_emb = nn.Sequential(nn.Linear(lattice_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.property_emb = PropertyEmbedding(num_properties, emb_dim)

        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        for i, d in enumerate(dims):
            self.down.append(nn.ModuleList(stage(d, d, i in cfg.attn_levels) for _ in range(cfg.num_res_blocks)))
            if i + 1 < len(dims):
                self.downsample.append(Downsample(d, dims[i + 1], cfg.downsample_l))
        self.mid = nn.ModuleList([stage(dims[-1], dims[-1], True), stage(dims[-1], dims[-1], False)])
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(dims))):
            d = dims[i]
            self.up.append(nn.ModuleList(stage(2 * d, d, i in cfg.attn_levels) for _ in range(cfg.num_res_blocks)))
            if i > 0:
                self.upsample.append(Upsample(d, dims[i - 1], cfg.conv))

        self.out_norm = group_norm(dims[0])
        self.out_conv = Conv3x3(dims[0], 3, cfg.conv)
        last = self.out_conv.conv if cfg.conv == "full" else self.out_conv.spatial
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.lattice_head = nn.Sequential(
            nn.Linear(dims[0] + dims[-1] + emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, lattice_dim)
        )
        nn.init.zeros_(self.lattice_head[-1].weight)
        nn.init.zeros_(self.lattice_head[-1].bias)

    # ------------------------------------------------------------------ forward
    def _run(self, module: nn.Module, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.cfg.checkpoint_activations and self.training and torch.is_grad_enabled():
            return checkpoint(module, h, emb, use_reentrant=False)
        return module(h, emb)

    def forward(
        self, x: torch.Tensor, lattice: torch.Tensor, t: torch.Tensor, cond: Condition
    ) -> tuple[torch.Tensor, torch.Tensor]:
        L, H, W = self.shape
        if tuple(x.shape[1:]) != (L, H, W, 3):
            raise ValueError(f"positions have shape {tuple(x.shape)}, this model expects (B, {L}, {H}, {W}, 3)")
        if lattice.shape[1:] != (self.lattice_dim,):
            raise ValueError(f"lattice has shape {tuple(lattice.shape)}, this model expects (B, {self.lattice_dim})")
        if cond.properties.shape[1] != self.num_properties:
            raise ValueError(f"condition has {cond.properties.shape[1]} properties, the model {self.num_properties}")
        # Inputs follow the weights' dtype, so the same code runs under autocast (fp32 weights) and with
        # bf16 weights (DeepSpeed bf16 mode).
        dtype = self.cell_emb.dtype
        x, lattice = x.to(dtype), lattice.to(dtype)
        h = rearrange(x, "b l h w c -> b c l h w")
        lat = lattice[:, :, None, None, None].expand(-1, -1, L, H, W)
        h = torch.cat([h, cond.channels().to(dtype), lat], 1)
        h = self.init_conv(h) + self.cell_emb + self.slot_emb
        emb = (
            self.time_emb(t, dtype)
            + self.lattice_emb(lattice)
            + self.property_emb(cond.properties.to(dtype), cond.property_mask)
        )

        skips, sizes = [], []
        for i, level in enumerate(self.down):
            for st in level:
                h = self._run(st, h, emb)
                skips.append(h)
            if i < len(self.downsample):
                sizes.append(tuple(h.shape[-3:]))
                h = self.downsample[i](h)
        for st in self.mid:
            h = self._run(st, h, emb)
        mid_pool = h.mean((2, 3, 4))
        for i, level in enumerate(self.up):
            for st in level:
                h = self._run(st, torch.cat([h, skips.pop()], 1), emb)
            if i < len(self.upsample):
                h = self.upsample[i](h, sizes.pop())
        h = F.silu(self.out_norm(h))
        eps_x = rearrange(self.out_conv(h), "b c l h w -> b l h w c")
        eps_lat = self.lattice_head(torch.cat([h.mean((2, 3, 4)), mid_pool, emb], -1))
        return eps_x, eps_lat

    # ------------------------------------------------------------------ training helpers (nanoGPT style)
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def optim_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW parameter groups: decay conv/linear weights only, not norms, biases or embeddings."""
        return adamw_groups(self, weight_decay, lambda name: name.endswith(("cell_emb", "slot_emb", "null"))
                            or name.startswith("property_emb"))

    def init_kwargs(self) -> dict[str, Any]:
        """Everything needed to rebuild this network (stored in checkpoints): ``UniMatUNet.from_kwargs``."""
        return {
            "unet": self.cfg.to_dict(),
            "shape": list(self.shape),
            "lattice_dim": self.lattice_dim,
            "num_properties": self.num_properties,
        }

    @classmethod
    def from_kwargs(cls, d: dict[str, Any]) -> "UniMatUNet":
        return cls(UNetConfig.from_dict(d["unet"]), tuple(d["shape"]), d["lattice_dim"], d["num_properties"])

    def flops_per_sample(self) -> int:
        """Forward FLOPs for one sample (counted by torch's FlopCounterMode on a batch of 1, on the meta device)."""
        from torch.utils.flop_counter import FlopCounterMode

        with torch.device("meta"):
            net = UniMatUNet(self.cfg, self.shape, self.lattice_dim, self.num_properties)
            x = torch.zeros((1, *self.shape, 3))
            y = torch.zeros((1, self.lattice_dim))
            t = torch.zeros(1, dtype=torch.long)
            cond = Condition.unconditional(1, self.shape, self.num_properties)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            net(x, y, t, cond)
        return int(counter.get_total_flops())


def build_unet(cfg: UNetConfig, spec, num_properties: int = 0) -> UniMatUNet:
    """The U-Net for a ``UniMatSpec`` (its L, H, W and lattice dimension)."""
    return UniMatUNet(cfg, (spec.L, spec.H, spec.W), spec.lattice_dim, num_properties)
