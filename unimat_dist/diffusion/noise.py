"""Random streams of the samplers: one generator for a whole batch, or one per group of rows.

A served batch mixes requests from different clients. For a request's seed to reproduce its samples
whatever they were batched with, its rows must draw their noise from their own generator: the
initial x_T, y_T and every ancestral (DDPM, DDIM with eta > 0) draw. ``RowGenerators`` says which
contiguous rows use which generator; ``randn`` draws ``(n_i, ...)`` from generator i and concatenates,
so the numbers a group receives depend only on its own seed, its row count and the sequence of shapes
the sampler asks for (the sampler and step count), never on the other groups.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch


@dataclass(frozen=True)
class RowGenerators:
    """Rows ``[0, counts[0])`` draw from ``generators[0]``, the next ``counts[1]`` rows from ``generators[1]``, ..."""

    generators: tuple[torch.Generator, ...]
    counts: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.generators) != len(self.counts) or not self.counts:
            raise ValueError(f"{len(self.generators)} generators for {len(self.counts)} row groups")
        if any(int(n) < 1 for n in self.counts):
            raise ValueError(f"row counts must be >= 1, got {list(self.counts)}")

    @classmethod
    def seeded(cls, seeds: Sequence[int], counts: Sequence[int], device: str | torch.device = "cpu") -> "RowGenerators":
        """One fresh generator per group, ``torch.Generator(device).manual_seed(seed)``."""
        gens = []
        for s in seeds:
            g = torch.Generator(device=torch.device(device))
            g.manual_seed(int(s))
            gens.append(g)
        return cls(tuple(gens), tuple(int(n) for n in counts))

    @property
    def rows(self) -> int:
        return sum(self.counts)


NoiseSource = Union[torch.Generator, RowGenerators, None]


def randn(shape: Sequence[int], generator: NoiseSource, device: str | torch.device) -> torch.Tensor:
    """Standard normal noise of ``shape`` (rows first) from a generator, per-row-group generators, or the
    global RNG (``None``)."""
    shape = tuple(int(s) for s in shape)
    if not isinstance(generator, RowGenerators):
        return torch.randn(shape, device=device, generator=generator)
    if shape[0] != generator.rows:
        raise ValueError(f"noise for {shape[0]} rows requested from generators covering {generator.rows}")
    return torch.cat(
        [torch.randn((n, *shape[1:]), device=device, generator=g)
         for g, n in zip(generator.generators, generator.counts)]
    )
