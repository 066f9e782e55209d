"""`CrystalTransformer`: the denoiser as a transformer over the atom slots of the UniMat tensor.

Each slot of the (L, H, W) tensor that may hold an atom under the sample's condition is a token (with
exact counts: exactly the atoms; with element types or no composition: every slot of the allowed cells,
null or not). A token knows its element only through the periodic-table cell it sits in (learned
embeddings of the cell, its period and its group, so chemically neighbouring elements share
statistics), and its position only through the diffusion state: the circle embedding of its three
fractional coordinates (``diffusion/positions.py``). Tokens attend to the tokens of their own crystal.

Symmetries are built in, not learned from augmentation (which the U-Net could not exploit;
docs/learning_core.md):
* a change of origin rotates every atom's circle embedding by the same angles: attention sees only
  relative phases (Fourier features of u_j - u_i) and Cartesian distances to periodic images (through
  the metric tensor of the noisy lattice), and the output is expressed in each atom's own phase frame,
  so the prediction moves with the atoms;
* the slots of a cell are an unordered set, and the network has no slot index: permuting atoms permutes
  the output.

One layer: pre-LN multi-head attention whose logits get a per-head bias from the pair features and
whose values get the attention-weighted pair features added (a cheap stand-in for edge messages), then an
MLP modulated by the conditioning vector (time, noisy lattice, properties; DiT-style scale/shift).

Outputs: the position noise in each atom's phase frame (a complex multiplication, so it turns with the
atom), and the lattice noise from the mean of the tokens and the conditioning vector.

The composition prior (``model/composition.py``) is a submodule, so the optimizer, the EMA, DeepSpeed
and every checkpoint carry it with the denoiser's weights; ``GaussianDiffusion`` adds its NLL to the
loss.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .blocks import adamw_groups
from .composition import CompositionModel
from .conditioning import Condition
from .config import TransformerConfig
from .embeddings import PropertyEmbedding, TimestepEmbedding
from .periodic import TWO_PI, fourier_pair_features, image_distances, metric_tensor, radial_basis

N_ROWS, N_GROUPS = 9, 18


class _Layer(nn.Module):
    def __init__(self, dim: int, heads: int, pair_dim: int, mlp_ratio: int, dropout: float, edge_dim: int = 0) -> None:
        super().__init__()
        self.heads = heads
        self.edge_dim = edge_dim
        if edge_dim:  # DiffCSP/EGNN-style messages: a nonlinear function of both atoms and their pair features
            self.edge_i = nn.Linear(dim, edge_dim)
            self.edge_j = nn.Linear(dim, edge_dim, bias=False)
            self.edge_p = nn.Linear(pair_dim, edge_dim, bias=False)
            self.edge_out = nn.Linear(edge_dim, dim)
            nn.init.zeros_(self.edge_out.weight)
            nn.init.zeros_(self.edge_out.bias)
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.pair_bias = nn.Linear(pair_dim, heads)
        self.pair_value = nn.Linear(heads * pair_dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.modulation = nn.Linear(dim, 2 * dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.SiLU(), nn.Dropout(dropout),
                                 nn.Linear(mlp_ratio * dim, dim))
        for last in (self.proj, self.mlp[-1], self.modulation):
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, h: torch.Tensor, pair: torch.Tensor, key_ok: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        b, a, _ = h.shape
        q, k, v = self.qkv(self.ln1(h)).view(b, a, 3, self.heads, -1).unbind(2)
        logits = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(q.shape[-1])
        logits = logits + self.pair_bias(pair).permute(0, 3, 1, 2)
        att = logits.masked_fill(~key_ok[:, None, None, :], -1e4).softmax(-1)
        out = torch.einsum("bhij,bjhd->bihd", att, v).reshape(b, a, -1)
        pv = torch.einsum("bhij,bijp->bihp", att, pair.to(att.dtype)).reshape(b, a, -1)
        h = h + self.proj(out + self.pair_value(pv))
        if self.edge_dim:
            x = self.ln1(h)
            m = F.silu(self.edge_i(x)[:, :, None] + self.edge_j(x)[:, None] + self.edge_p(pair))  # (B, A, A, E)
            keys = key_ok.to(m.dtype)[:, None, :, None]
            h = h + self.edge_out((m * keys).sum(2) / keys.sum(2).clamp(min=1))
        scale, shift = self.modulation(emb).chunk(2, -1)
        return h + self.mlp(self.ln2(h) * (1 + scale[:, None]) + shift[:, None])


# Cost model for `token_buckets`, in units of one (row, pair) of work: a token costs ~8 pairs (its MLP and
# projections against the pair MLP), a bucket a fixed amount of kernel launches and Python (~one 12-row x
# 8-atom block). On Carbon-24 (`small` + RBFs + pair messages, batch 512, 2 CPU threads) this plans 7 buckets
# and a training step goes from 2.18 s to 0.59 s (3.7x); batches of one crystal size are untouched.
_TOKEN_COST = 8
_BUCKET_OVERHEAD = 12 * (8 * 8 + _TOKEN_COST * 8)


def token_buckets(counts: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
    """Split rows with ``counts`` tokens into buckets of similar size: [(row indices, tokens to pad to)].

    Contiguous ranges of the sorted distinct counts, chosen by dynamic programming to minimise
    sum(rows x (A^2 + c A)) + overhead per bucket. One bucket (the plain batch) when that is cheapest,
    e.g. when every row has the same count.
    """
    values, inverse, rows_per = torch.unique(counts.cpu(), return_inverse=True, return_counts=True)
    if len(values) == 1:
        return [(torch.arange(len(counts), device=counts.device), max(int(values[0]), 1))]
    v, r = [max(int(x), 1) for x in values], [int(x) for x in rows_per]
    m = len(v)
    best = [0.0] + [float("inf")] * m  # best[j]: cost of the first j distinct counts
    cut = [0] * (m + 1)
    for j in range(1, m + 1):
        a = v[j - 1]
        rows = 0
        for i in range(j, 0, -1):  # bucket = distinct counts i-1 .. j-1, padded to a
            rows += r[i - 1]
            c = best[i - 1] + rows * (a * a + _TOKEN_COST * a) + _BUCKET_OVERHEAD
            if c < best[j]:
                best[j], cut[j] = c, i - 1
    bounds, j = [], m
    while j > 0:
        bounds.append((cut[j], j))
        j = cut[j]
    if len(bounds) == 1:
        return [(torch.arange(len(counts), device=counts.device), v[-1])]
    out = []
    for i, j in reversed(bounds):
        rows = torch.nonzero((inverse >= i) & (inverse < j)).flatten().to(counts.device)
        out.append((rows, v[j - 1]))
    return out


class CrystalTransformer(nn.Module):
    arch = "transformer"

    def __init__(
        self,
        cfg: TransformerConfig,
        shape: tuple[int, int, int],
        lattice_dim: int,
        num_properties: int = 0,
        *,
        grid_rows: list[int],
        grid_cols: list[int],
        allowed_cells: list[list[bool]] | np.ndarray,
        lattice_mean: list[float],
        lattice_std: list[float],
        z_at_cell: list[list[int]] | np.ndarray | None = None,
    ) -> None:
        super().__init__()
        if lattice_dim != 6:
            raise ValueError("the transformer denoiser needs fractional coordinates (6 lattice parameters); "
                             "use model.arch=unet for Cartesian coordinates")
        self.cfg = cfg
        self.shape = tuple(int(s) for s in shape)
        self.lattice_dim = int(lattice_dim)
        self.num_properties = int(num_properties)
        self.grid_rows, self.grid_cols = [int(r) for r in grid_rows], [int(c) for c in grid_cols]
        L, H, W = self.shape
        d, p = cfg.dim, cfg.pair_dim
        rows = torch.as_tensor(self.grid_rows).view(1, H, 1).expand(L, H, W)
        cols = torch.as_tensor(self.grid_cols).view(1, 1, W).expand(L, H, W)
        self.register_buffer("slot_row", rows.flatten().clone(), persistent=False)
        self.register_buffer("slot_col", cols.flatten().clone(), persistent=False)
        self.register_buffer("allowed_cells", torch.as_tensor(np.asarray(allowed_cells), dtype=torch.bool),
                             persistent=False)
        self.register_buffer("lattice_mean", torch.as_tensor(lattice_mean, dtype=torch.float32), persistent=False)
        self.register_buffer("lattice_std", torch.as_tensor(lattice_std, dtype=torch.float32), persistent=False)

        self.cell_emb = nn.Embedding(N_ROWS * N_GROUPS, d)
        self.row_emb = nn.Embedding(N_ROWS, d)
        self.group_emb = nn.Embedding(N_GROUPS, d)
        self.radius_in = nn.Linear(3, d)
        self.time_emb = TimestepEmbedding(d, d)
        self.lattice_emb = nn.Sequential(nn.Linear(lattice_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.property_emb = PropertyEmbedding(num_properties, d)
        n_pair = 6 * cfg.harmonics + cfg.rbf
        self.pair_mlp = nn.Sequential(nn.Linear(n_pair, p), nn.SiLU(), nn.Linear(p, p), nn.SiLU())
        self.layers = nn.ModuleList(_Layer(d, cfg.heads, p, cfg.mlp_ratio, cfg.dropout, cfg.edge_dim) for _ in range(cfg.depth))
        self.ln_out = nn.LayerNorm(d)
        self.lattice_head = nn.Sequential(nn.Linear(2 * d, d), nn.SiLU(), nn.Linear(d, lattice_dim))
        self.position_head = nn.Linear(d, 6)
        nn.init.zeros_(self.position_head.weight)
        nn.init.zeros_(self.position_head.bias)
        nn.init.zeros_(self.lattice_head[-1].weight)
        nn.init.zeros_(self.lattice_head[-1].bias)
        self.composition: CompositionModel | None = None
        if cfg.composition_dim and z_at_cell is not None:
            self.composition = CompositionModel(z_at_cell, L, cfg.composition_dim)

    # ------------------------------------------------------------------ tokens
    def tokens(self, cond: Condition) -> tuple[torch.Tensor, torch.Tensor]:
        """(order (B, A) flat slot index of each token, ok (B, A) bool): the slots this condition opens,
        packed first (in slot order), A = the most of any row."""
        active = cond.allowed_slots(self.allowed_cells).flatten(1)
        a = max(int(active.sum(1).max()), 1)
        order = torch.argsort((~active).to(torch.int8), dim=1, stable=True)[:, :a]
        return order, torch.gather(active, 1, order)

    def lattice_params(self, y: torch.Tensor) -> torch.Tensor:
        """Model-space lattice (standardised log lengths and angles) -> (a, b, c, alpha, beta, gamma)."""
        feats = y.float() * self.lattice_std + self.lattice_mean
        return torch.cat([feats[:, :3].clamp(-3.0, 6.0).exp(), feats[:, 3:].clamp(20.0, 160.0)], -1)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, lattice: torch.Tensor, t: torch.Tensor, cond: Condition
                ) -> tuple[torch.Tensor, torch.Tensor]:
        L, H, W = self.shape
        if tuple(x.shape[1:]) != (L, H, W, 6):
            raise ValueError(f"positions have shape {tuple(x.shape)}, this model expects (B, {L}, {H}, {W}, 6)")
        if lattice.shape[1:] != (self.lattice_dim,):
            raise ValueError(f"lattice has shape {tuple(lattice.shape)}, this model expects (B, {self.lattice_dim})")
        if cond.properties.shape[1] != self.num_properties:
            raise ValueError(f"condition has {cond.properties.shape[1]} properties, the model {self.num_properties}")
        order, ok = self.tokens(cond)
        buckets = token_buckets(ok.sum(1))
        if len(buckets) == 1:
            return self._denoise(x, lattice, t, cond, order, ok)
        # Crystals of very different sizes in one batch (Carbon-24: 6-24 atoms, mean 9): padding every row to
        # the largest makes the pair work (B, A, A) ~6x what the atoms need, so rows run in buckets of similar
        # size, each padded to its own largest. Padded tokens never reach a real one (masked keys, per-token
        # norms), so this changes nothing but the cost.
        out_x = torch.zeros_like(x)
        out_y = lattice.new_zeros(lattice.shape)
        for rows, a in buckets:
            px, py = self._denoise(x[rows], lattice[rows], t[rows], cond[rows], order[rows, :a], ok[rows, :a])
            out_x = out_x.index_copy(0, rows, px)
            out_y = out_y.index_copy(0, rows, py.to(out_y.dtype))
        return out_x, out_y

    def _denoise(self, x: torch.Tensor, lattice: torch.Tensor, t: torch.Tensor, cond: Condition,
                 order: torch.Tensor, ok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The network on rows whose tokens are ``order`` (B, A) / ``ok`` (B, A), A = the most of any row."""
        L, H, W = self.shape
        dtype = self.cell_emb.weight.dtype
        b = x.shape[0]
        a = order.shape[1]
        z = torch.gather(x.reshape(b, L * H * W, 6).float(), 1, order[..., None].expand(-1, -1, 6)).view(b, a, 3, 2)
        radius = z.norm(dim=-1)  # (B, A, 3)
        unit = torch.complex(z[..., 0], z[..., 1]) / radius.clamp(min=1e-6)
        row, col = self.slot_row[order], self.slot_col[order]
        h = self.cell_emb(row * N_GROUPS + col) + self.row_emb(row) + self.group_emb(col)
        h = h + self.radius_in(radius.to(dtype))
        emb = (self.time_emb(t, dtype) + self.lattice_emb(lattice.to(dtype))
               + self.property_emb(cond.properties.to(dtype), cond.property_mask))
        h = h + emb[:, None]

        with torch.no_grad():
            feats = [fourier_pair_features(unit, self.cfg.harmonics)]
            frac = torch.angle(unit) / TWO_PI
            if self.cfg.rbf:
                dist, _ = image_distances(frac, metric_tensor(self.lattice_params(lattice)), self.cfg.images)
                feats.append(radial_basis(dist, self.cfg.rbf, self.cfg.rbf_cutoff))
        pair = self.pair_mlp(torch.cat(feats, -1).to(dtype))
        for layer in self.layers:
            h = layer(h, pair, ok, emb)
        h = self.ln_out(h)
        okf = ok.to(h.dtype)[..., None]
        pooled = (h * okf).sum(1) / okf.sum(1).clamp(min=1)
        out_y = self.lattice_head(torch.cat([pooled, emb], -1))

        f = self.position_head(h).float().view(b, a, 3, 2)
        tok = unit * torch.complex(f[..., 0], f[..., 1])
        tok = torch.view_as_real(tok).reshape(b, a, 6) * ok[..., None]
        out_x = x.new_zeros((b, L * H * W, 6), dtype=torch.float32)
        out_x = out_x.scatter(1, order[..., None].expand(-1, -1, 6), tok)
        return out_x.view(b, L, H, W, 6).to(x.dtype), out_y

    # ------------------------------------------------------------------ training helpers (as UniMatUNet)
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def optim_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups: decay linear weights only, not norms, biases or embeddings."""
        return adamw_groups(self, weight_decay, lambda name: name.split(".")[0] in ("cell_emb", "row_emb", "group_emb")
                            or name.startswith("property_emb"))

    def init_kwargs(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "transformer": self.cfg.to_dict(),
            "shape": list(self.shape),
            "lattice_dim": self.lattice_dim,
            "num_properties": self.num_properties,
            "grid_rows": self.grid_rows,
            "grid_cols": self.grid_cols,
            "allowed_cells": self.allowed_cells.tolist(),
            "lattice_mean": self.lattice_mean.tolist(),
            "lattice_std": self.lattice_std.tolist(),
            "z_at_cell": self.composition.init_kwargs()["z_at_cell"] if self.composition is not None else None,
        }

    @classmethod
    def from_kwargs(cls, d: dict[str, Any]) -> "CrystalTransformer":
        return cls(TransformerConfig.from_dict(d["transformer"]), tuple(d["shape"]), d["lattice_dim"],
                   d["num_properties"], grid_rows=d["grid_rows"], grid_cols=d["grid_cols"],
                   allowed_cells=d["allowed_cells"], lattice_mean=d["lattice_mean"], lattice_std=d["lattice_std"],
                   z_at_cell=d.get("z_at_cell"))

    def flops_per_sample(self, atoms: int | None = None) -> int:
        """Forward FLOPs for one crystal of ``atoms`` atoms (default: L)."""
        from torch.utils.flop_counter import FlopCounterMode

        L, H, W = self.shape
        n = atoms or L
        kw = self.init_kwargs()
        net = CrystalTransformer.from_kwargs(kw)
        comp = torch.zeros((1, L, H, W))
        hh, ww = np.argwhere(np.asarray(kw["allowed_cells"]))[0]
        comp[0, :min(n, L), hh, ww] = 1
        cond = Condition(comp, torch.ones(1, dtype=torch.bool), torch.zeros((1, self.num_properties)),
                         torch.zeros((1, self.num_properties), dtype=torch.bool))
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            net(torch.randn((1, L, H, W, 6)), torch.zeros((1, self.lattice_dim)), torch.zeros(1, dtype=torch.long), cond)
        return int(counter.get_total_flops())


def build_transformer(cfg: TransformerConfig, spec, normalizer, num_properties: int = 0) -> CrystalTransformer:
    """The transformer for a ``UniMatSpec`` and the lattice statistics of its ``Normalizer``."""
    return CrystalTransformer(
        cfg, (spec.L, spec.H, spec.W), spec.lattice_dim, num_properties,
        grid_rows=list(map(int, spec.rows)), grid_cols=list(map(int, spec.cols)),
        allowed_cells=spec.allowed_cells, lattice_mean=list(normalizer.lattice_mean),
        lattice_std=list(normalizer.lattice_std), z_at_cell=spec.z_at_cell.tolist(),
    )


__all__ = ["CrystalTransformer", "build_transformer"]
