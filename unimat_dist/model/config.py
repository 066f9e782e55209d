"""`UNetConfig`: the size and shape knobs of the UniMat 3D U-Net (data-independent).

The data-dependent sizes (L, H, W of the UniMat tensor, the lattice dimension D, the number of
conditioning properties P) are not part of the config; they come from the ``UniMatSpec`` and the
training data and are passed to ``UniMatUNet`` next to it (and stored in every checkpoint).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class UNetConfig:
    dim: int = 64  # channels at the first (full-resolution) level
    dim_mults: tuple[int, ...] = (1, 2, 4)  # channel multiplier per level; one level per entry
    num_res_blocks: int = 2  # residual blocks per level on the way down (and up)
    attn_levels: tuple[int, ...] = (1, 2)  # levels (0 = full resolution) with spatial + slot attention
    attn_heads: int = 4
    attn_head_dim: int = 32
    conv: Literal["factorized", "full"] = "factorized"  # (1,3,3)+(3,1,1) pseudo-3D, or full 3x3x3
    downsample_l: bool = False  # also halve L (slots) when going down; useful when L is large (carbon)
    dropout: float = 0.0  # inside residual blocks, probability
    emb_mult: int = 4  # conditioning-vector width = dim * emb_mult
    checkpoint_activations: bool = False  # recompute blocks in backward (less memory, ~30% more time)

    def __post_init__(self) -> None:
        if self.dim < 8 or self.dim % 4:
            raise ValueError(f"dim must be a multiple of 4 and >= 8, got {self.dim}")
        if not self.dim_mults or any(m < 1 for m in self.dim_mults):
            raise ValueError(f"dim_mults must be positive integers, got {self.dim_mults}")
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}")
        bad = [lvl for lvl in self.attn_levels if not 0 <= lvl < len(self.dim_mults)]
        if bad:
            raise ValueError(f"attn_levels {bad} outside the {len(self.dim_mults)} levels of dim_mults")
        if self.conv not in ("factorized", "full"):
            raise ValueError(f"conv must be 'factorized' or 'full', got {self.conv!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        object.__setattr__(self, "dim_mults", tuple(int(m) for m in self.dim_mults))
        object.__setattr__(self, "attn_levels", tuple(int(m) for m in self.attn_levels))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dim_mults"] = list(self.dim_mults)
        d["attn_levels"] = list(self.attn_levels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UNetConfig":
        from unimat_dist.config import from_dict

        return from_dict(cls, dict(d), prefix="model")


@dataclass(frozen=True)
class TransformerConfig:
    """Size and shape knobs of the atom-token transformer denoiser (``model/transformer.py``)."""

    dim: int = 128  # token width
    depth: int = 4  # layers
    heads: int = 8  # attention heads (dim must divide)
    pair_dim: int = 64  # width of the pair features (relative phases, distances) shared by all layers
    harmonics: int = 4  # Fourier harmonics of relative fractional positions (6 features each)
    rbf: int = 0  # radial basis functions of Cartesian distances to periodic images; 0 = none
    rbf_cutoff: float = 5.0  # Angstrom, centre of the last RBF
    images: int = 4  # nearest periodic images per atom pair that the RBFs see
    mlp_ratio: int = 4
    edge_dim: int = 0  # width of per-layer pair messages silu(A h_i + B h_j + C pair_ij) (0 = attention only)
    composition_dim: int = 128  # width of the composition prior's GRU (model/composition.py); 0 = no prior
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.dim < 8 or self.dim % self.heads:
            raise ValueError(f"dim must be >= 8 and a multiple of heads ({self.heads}), got {self.dim}")
        for name in ("depth", "heads", "pair_dim", "harmonics", "images", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.images > 27:
            raise ValueError(f"images must be <= 27 (the cells around the nearest image), got {self.images}")
        if self.rbf < 0 or self.rbf_cutoff <= 0.5:
            raise ValueError(f"rbf must be >= 0 and rbf_cutoff > 0.5 Angstrom, got {self.rbf}, {self.rbf_cutoff}")
        if self.edge_dim < 0:
            raise ValueError(f"edge_dim must be >= 0, got {self.edge_dim}")
        if self.composition_dim < 0:
            raise ValueError(f"composition_dim must be >= 0, got {self.composition_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TransformerConfig":
        from unimat_dist.config import from_dict

        return from_dict(cls, dict(d), prefix="model")
