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
