"""unimat-dist: distributed training and generation of UniMat crystal diffusion models on Ray."""

__version__ = "0.1.0"
