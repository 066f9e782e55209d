"""The UniMat denoiser: a conditional 3D U-Net in plain PyTorch (no distributed code, no I/O).

    from unimat_dist.model import build_unet, get_preset, Condition
    net = build_unet(get_preset("tiny"), spec, num_properties=1)
    eps_x, eps_lattice = net(x_t, lattice_t, t, Condition.unconditional(B, (L, H, W), 1))
"""
from .conditioning import Condition, PropertyScaler
from .config import UNetConfig
from .presets import PRESETS, get_preset
from .unet import UniMatUNet, build_unet

__all__ = ["PRESETS", "Condition", "PropertyScaler", "UNetConfig", "UniMatUNet", "build_unet", "get_preset"]
