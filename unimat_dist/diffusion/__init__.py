"""Gaussian diffusion for UniMat: schedules, the training loss, classifier-free guidance, DDPM/DDIM samplers.

    from unimat_dist.diffusion import GaussianDiffusion, sample
    diffusion = GaussianDiffusion(unet, spec.allowed_cells, timesteps=1000, schedule="linear")
    loss, metrics = diffusion(x0, lattice0, mask, cond)              # training
    out = sample(diffusion, cond, guidance=1.0, sampler="ddim", steps=100)   # generation
"""
from .gaussian import LOSS_WEIGHTINGS, GaussianDiffusion
from .guidance import cfg_combine, guided_eps, guided_rows, paired_condition
from .samplers import SAMPLERS, SampleOutput, sample
from .schedules import cosine_betas, linear_betas, make_betas, sampling_timesteps

__all__ = [
    "LOSS_WEIGHTINGS",
    "SAMPLERS",
    "GaussianDiffusion",
    "SampleOutput",
    "cfg_combine",
    "cosine_betas",
    "guided_eps",
    "guided_rows",
    "linear_betas",
    "make_betas",
    "paired_condition",
    "sample",
    "sampling_timesteps",
]
