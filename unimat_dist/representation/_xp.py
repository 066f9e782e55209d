"""Tiny array-namespace shim so the codec math runs unchanged on NumPy arrays and torch tensors.

torch is imported only when a torch tensor is passed in, so data-pipeline workers that encode with
NumPy never pay for it.
"""
from __future__ import annotations

import sys

import numpy as np


class _TorchNS:
    def __init__(self) -> None:
        import torch

        self.t = torch

    def __getattr__(self, name):
        return getattr(self.t, name)

    def clip(self, x, lo, hi):
        return self.t.clamp(x, lo, hi)

    def concatenate(self, xs, axis=0):
        return self.t.cat(xs, dim=axis)

    def stack(self, xs, axis=0):
        return self.t.stack(xs, dim=axis)

    def mod(self, x, m):
        return self.t.remainder(x, m)

    def zeros_like(self, x):
        return self.t.zeros_like(x)

    def ones_like(self, x):
        return self.t.ones_like(x)

    def arccos(self, x):
        return self.t.arccos(x)


_torch_ns: _TorchNS | None = None


def is_torch(x) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def namespace(x):
    """numpy for arrays/scalars, a numpy-named view of torch for tensors."""
    global _torch_ns
    if is_torch(x):
        if _torch_ns is None:
            _torch_ns = _TorchNS()
        return _torch_ns
    return np
