"""Learning-rate schedule: linear warmup, then cosine decay to ``min_lr_ratio * lr``. A pure function of the step."""
from __future__ import annotations

import math


def lr_at(step: int, *, lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1) -> float:
    """LR for optimizer step ``step`` (0-based). Warmup reaches ``lr`` after ``warmup_steps`` steps."""
    assert 0 <= min_lr_ratio <= 1, min_lr_ratio
    min_lr = lr * min_lr_ratio
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)
