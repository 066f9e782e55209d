"""The inference checkpoints released in checkpoints/ load without DeepSpeed and sample what is asked."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unimat_dist.sampling import load_generator

ROOT = Path(__file__).resolve().parents[1]
RELEASED = {"perov5_tiny_cpu.pt": ("SrTiO3", {"Sr": 1, "Ti": 1, "O": 3}),
            "carbon24_tiny_cpu.pt": ("C10", {"C": 10})}


def test_every_released_checkpoint_is_listed_and_documented():
    files = {p.name for p in (ROOT / "checkpoints").glob("*.pt")}
    assert files == set(RELEASED)
    readme = (ROOT / "checkpoints" / "README.md").read_text()
    for name in files:
        assert f"`{name}`" in readme
        assert (ROOT / "checkpoints" / name).stat().st_size < 8 * 2**20  # small enough for the repo


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_checkpoint_samples_the_requested_composition(name):
    raw = torch.load(ROOT / "checkpoints" / name, weights_only=True)  # plain dict, no pickled code
    assert isinstance(raw, dict)
    gen = load_generator(str(ROOT / "checkpoints" / name), device="cpu")
    formula, counts = RELEASED[name]
    structures = gen.sample(4, composition=formula, exact_counts=True, steps=20, seed=0)
    assert len(structures) == 4
    for s in structures:
        assert {str(e): int(n) for e, n in s.composition.get_el_amt_dict().items()} == counts
