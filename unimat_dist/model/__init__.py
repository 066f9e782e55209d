"""The UniMat denoiser: a conditional 3D U-Net in plain PyTorch (no distributed code, no I/O).

    from unimat_dist.model import build_unet, get_preset, Condition
    net = build_unet(get_preset("tiny"), spec, num_properties=1)
    eps_x, eps_lattice = net(x_t, lattice_t, t, Condition.unconditional(B, (L, H, W), 1))
"""
from .conditioning import Condition, PropertyScaler
from .composition import CompositionModel
from .config import TransformerConfig, UNetConfig
from .presets import ARCHS, PRESETS, TRANSFORMER_PRESETS, get_preset, get_transformer_preset
from .transformer import CrystalTransformer, build_transformer
from .unet import UniMatUNet, build_unet


def denoiser_from_kwargs(kwargs: dict):
    """The denoiser described by ``init_kwargs()`` of a checkpoint (U-Net when no ``arch`` is stored)."""
    if kwargs.get("arch", "unet") == "transformer":
        return CrystalTransformer.from_kwargs(kwargs)
    return UniMatUNet.from_kwargs(kwargs)


__all__ = [
    "ARCHS", "PRESETS", "TRANSFORMER_PRESETS", "CompositionModel", "Condition", "CrystalTransformer",
    "PropertyScaler", "TransformerConfig", "UNetConfig", "UniMatUNet", "build_transformer", "build_unet",
    "denoiser_from_kwargs", "get_preset", "get_transformer_preset",
]
