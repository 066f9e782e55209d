"""Named model sizes. Parameter counts: ``unimat model presets`` (they depend slightly on L, H, W);
forward GFLOPs per sample at MP-20 size (L = 20 over the full 9 x 18 table) in brackets.

    tiny   0.77M  (1.5)  CPU tests and smoke runs: a few hundred steps take a minute on 2 cores
    small  17.5M  (17)   one GPU, Perov-5 / Carbon-24 scale runs
    base   106M   (69)   one node of GPUs, MP-20
    large  588M   (391)  multi-node ZeRO runs, >= 300M parameters (the paper's scaling regime)
"""
from __future__ import annotations

from typing import Any

from .config import TransformerConfig, UNetConfig

PRESETS: dict[str, UNetConfig] = {
    "tiny": UNetConfig(dim=32, dim_mults=(1, 2), num_res_blocks=1, attn_levels=(1,), attn_heads=2, attn_head_dim=16),
    "small": UNetConfig(dim=64, dim_mults=(1, 2, 4), num_res_blocks=2, attn_levels=(1, 2), attn_heads=4, attn_head_dim=32),
    "base": UNetConfig(
        dim=128, dim_mults=(1, 2, 3, 4), num_res_blocks=2, attn_levels=(1, 2, 3), attn_heads=8, attn_head_dim=64
    ),
    "large": UNetConfig(
        dim=256, dim_mults=(1, 2, 3, 4), num_res_blocks=3, attn_levels=(1, 2, 3), attn_heads=16, attn_head_dim=64
    ),
}


# The atom-token transformer (model/transformer.py), parameters at Perov-5 size incl. the composition prior:
#   tiny ~0.3M (quickstart), small ~1.3M (released CPU models), base ~6M, large ~40M.
TRANSFORMER_PRESETS: dict[str, TransformerConfig] = {
    "tiny": TransformerConfig(dim=64, depth=3, heads=4, pair_dim=32, composition_dim=64),
    "small": TransformerConfig(dim=128, depth=4, heads=8, pair_dim=64),
    "base": TransformerConfig(dim=256, depth=6, heads=8, pair_dim=64),
    "large": TransformerConfig(dim=512, depth=12, heads=16, pair_dim=128),
}
ARCHS = ("unet", "transformer")


def get_transformer_preset(name: str, **overrides: Any) -> TransformerConfig:
    try:
        base = TRANSFORMER_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown transformer preset {name!r}; known: {', '.join(TRANSFORMER_PRESETS)}") from None
    return TransformerConfig.from_dict({**base.to_dict(), **overrides}) if overrides else base


def get_preset(name: str, **overrides: Any) -> UNetConfig:
    """A preset, optionally with some fields replaced (``get_preset("small", dropout=0.1)``)."""
    try:
        base = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}") from None
    if not overrides:
        return base
    return UNetConfig.from_dict({**base.to_dict(), **overrides})


__all__ = ["ARCHS", "PRESETS", "TRANSFORMER_PRESETS", "get_preset", "get_transformer_preset"]
