"""Data augmentations that keep a UniMat tensor describing the same crystal.

Valid for fractional coordinates:
* ``shuffle_slots`` - the L slots of an element cell are an unordered set, so any permutation of them
  is the same crystal. ``mode="atoms"`` permutes only the occupied slots (atoms stay packed in slots
  0..n-1, which is what exact-count conditioning at sampling time produces); ``mode="all"``
  permutes all L slots, so atoms land anywhere along L (the count mask moves with them).
* ``random_translation`` - adding the same vector to every fractional coordinate (mod 1) is a change
  of origin, a symmetry of every periodic crystal.
Rotations do not change fractional coordinates or lattice parameters, so they are no-ops there;
mirror images and lattice-vector permutations are *not* applied because they change handedness or
the (a, b, c) labelling the model learns from.

Valid for Cartesian coordinates: ``shuffle_slots``, and ``random_rotation``, which rotates every atom
and the lattice matrix together (a rigid motion; the fractional coordinates are unchanged).

All functions take batches (leading B dimension), NumPy or torch, and a generator
(``numpy.random.Generator`` or ``torch.Generator``).
"""
from __future__ import annotations

import numpy as np

from ._xp import is_torch
from .spec import NULL_VALUE


def _uniform(shape, rng, like):
    if is_torch(like):
        import torch

        return torch.rand(shape, generator=rng, device=like.device if rng is None else rng.device)
    return (rng or np.random.default_rng()).random(shape)


def shuffle_slots(positions, mask, rng=None, mode: str = "atoms"):
    """Permute slots within each element cell. positions (B, L, H, W, 3), mask (B, L, H, W)."""
    if mode not in ("atoms", "all"):
        raise ValueError(f"mode must be 'atoms' or 'all', got {mode!r}")
    keys = _uniform(mask.shape, rng, positions)
    if mode == "atoms":
        keys = keys + (~mask) * 2.0  # empty slots sort after every atom
    if is_torch(positions):
        import torch

        perm = torch.argsort(keys, dim=1)
        pos = torch.gather(positions, 1, perm[..., None].expand_as(positions))
        return pos, torch.gather(mask, 1, perm)
    perm = np.argsort(keys, axis=1, kind="stable")
    return np.take_along_axis(positions, perm[..., None], 1), np.take_along_axis(mask, perm, 1)


def random_translation(positions, mask, rng=None):
    """Shift every atom of each crystal by one random fractional vector (mod 1); nulls stay null."""
    b = positions.shape[0]
    shift = _uniform((b, 3), rng, positions)
    shifted = (positions + shift.reshape(b, 1, 1, 1, 3)) % 1.0
    if is_torch(positions):
        import torch

        return torch.where(mask[..., None], shifted, torch.full_like(positions, NULL_VALUE)), mask
    return np.where(mask[..., None], shifted, NULL_VALUE), mask


def random_rotation_matrices(b: int, rng=None, like=None):
    """(b, 3, 3) rotations drawn uniformly from SO(3) (QR of a Gaussian matrix, sign-fixed)."""
    if like is not None and is_torch(like):
        import torch

        g = torch.randn((b, 3, 3), generator=rng, dtype=like.dtype, device=like.device)
        q, r = torch.linalg.qr(g)
        q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
        det = torch.linalg.det(q)
        q[:, :, 0] = q[:, :, 0] * det[:, None]
        return q
    g = (rng or np.random.default_rng()).standard_normal((b, 3, 3))
    q, r = np.linalg.qr(g)
    q = q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[:, None, :]
    q[:, :, 0] *= np.linalg.det(q)[:, None]
    return q


def random_rotation(positions, mask, lattice, rng=None):
    """Rotate Cartesian crystals: positions (B, L, H, W, 3), lattice (B, 9) row-vector matrices.

    Returns (positions, mask, lattice); row vectors rotate as ``v @ R^T``.
    """
    b = positions.shape[0]
    rot = random_rotation_matrices(b, rng, positions)
    if is_torch(positions):
        import torch

        pos = torch.einsum("blhwi,bji->blhwj", positions, rot)
        pos = torch.where(mask[..., None], pos, torch.full_like(pos, NULL_VALUE))
        lat = torch.einsum("bki,bji->bkj", lattice.reshape(b, 3, 3), rot).reshape(b, 9)
        return pos, mask, lat
    pos = np.einsum("blhwi,bji->blhwj", positions, rot)
    pos = np.where(mask[..., None], pos, NULL_VALUE)
    lat = np.einsum("bki,bji->bkj", lattice.reshape(b, 3, 3), rot).reshape(b, 9)
    return pos, mask, lat
