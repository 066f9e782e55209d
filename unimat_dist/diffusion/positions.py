"""Where the diffusion process lives for atom positions: the model-space tensor as is, or its circle embedding.

The ``Normalizer`` puts positions into *model space*: fractional coordinates in [0, 1) for atoms, -1 for
empty slots (Cartesian ones mapped into [0, 1]). The diffusion process runs in a *position space* built
on it:

* ``linear``: model space itself, 3 channels (the paper's choice). Gaussian noise on a coordinate in
  [0, 1) ignores that 0.99 and 0.01 are neighbours, and a change of origin is not a symmetry of the
  noising process, so the network has to learn both (measured: it does not, docs/learning_core.md).
* ``circle`` (fractional coordinates only): each coordinate u becomes (cos 2 pi u, sin 2 pi u), 6
  channels per slot, and an empty slot is the origin (0, ..., 0). A change of origin rotates every
  atom's pairs by the same angles and Gaussian noise is rotation invariant, so the forward process
  commutes with the symmetry and an equivariant network (``model/transformer.py``) can honour it
  exactly; wrapping is built in; atoms have radius 1 and nulls radius 0, so the occupancy of a slot is
  its radius. Each channel has variance 1/2 over the data, about what image diffusion schedules expect
  (fractional coordinates spread ~0.29, so most timesteps of the linear space drown them).

``PositionSpace`` maps model space to its diffusion space and back, and constrains x_0 estimates in the
samplers (clip / project onto the data's range, pin disallowed slots to null, fix exact-count atoms).
"""
from __future__ import annotations

import math

import torch

from unimat_dist.representation import NULL_VALUE

POSITION_SPACES = ("linear", "circle")
TWO_PI = 2.0 * math.pi


class PositionSpace:
    def __init__(self, name: str) -> None:
        if name not in POSITION_SPACES:
            raise ValueError(f"positions must be one of {POSITION_SPACES}, got {name!r}")
        self.name = name
        self.channels = 3 if name == "linear" else 6
        self.null = NULL_VALUE if name == "linear" else 0.0

    def to_diffusion(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Model-space positions (..., 3) and atom mask (...) -> diffusion space (..., channels)."""
        if self.name == "linear":
            return x
        ang = TWO_PI * x
        z = torch.stack([torch.cos(ang), torch.sin(ang)], -1).flatten(-2)
        return torch.where(mask[..., None], z, torch.zeros_like(z))

    def from_diffusion(self, x: torch.Tensor) -> torch.Tensor:
        """Diffusion space -> model space (fractional in [0, 1); slots of mean radius < 1/2 are null, -1)."""
        if self.name == "linear":
            return x
        z = x.float().unflatten(-1, (3, 2))
        frac = torch.remainder(torch.atan2(z[..., 1], z[..., 0]) / TWO_PI, 1.0)
        atom = z.norm(dim=-1).mean(-1) > 0.5
        return torch.where(atom[..., None], frac, torch.full_like(frac, NULL_VALUE))

    def constrain(self, x0: torch.Tensor, allowed: torch.Tensor, exact_atoms: torch.Tensor) -> torch.Tensor:
        """An x_0 estimate kept inside the data's range: slots that cannot hold an atom are null, slots fixed
        to hold one are atoms (linear: in [0, 1]; circle: on the unit circle), the rest at most atom-sized
        (linear: [-1, 1]; circle: radius <= 1)."""
        if self.name == "linear":
            x0 = x0.clamp(NULL_VALUE, 1.0)
            x0 = torch.where(allowed[..., None], x0, torch.full_like(x0, NULL_VALUE))
            return torch.where(exact_atoms[..., None], x0.clamp(0.0, 1.0), x0)
        z = x0.unflatten(-1, (3, 2))
        r = z.norm(dim=-1, keepdim=True)
        unit = z / r.clamp(min=1e-6)
        z = torch.where(exact_atoms[..., None, None], unit, z * r.clamp(max=1.0) / r.clamp(min=1e-6))
        z = torch.where(allowed[..., None, None], z, torch.zeros_like(z))
        return z.flatten(-2)


__all__ = ["POSITION_SPACES", "PositionSpace"]
