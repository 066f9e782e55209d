"""Generation from trained UniMat models: the inference checkpoint format and the batched generator.

    from unimat_dist.inference import load_generator
    structures = load_generator("out/run").sample(16, composition="SrTiO3", sampler="ddim", steps=100)
"""
from .checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    build_diffusion,
    inference_payload,
    load_inference_checkpoint,
    resolve_inference_path,
    resolve_sampling,
    save_inference_checkpoint,
)
from .generator import GeneratedBatch, SampleRequest, StructureGenerator, load_generator

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "GeneratedBatch",
    "SampleRequest",
    "StructureGenerator",
    "build_diffusion",
    "inference_payload",
    "load_generator",
    "load_inference_checkpoint",
    "resolve_inference_path",
    "resolve_sampling",
    "save_inference_checkpoint",
]
