"""When things happen along training: the learning-rate schedule and the evaluation steps."""

from __future__ import annotations

import math

import numpy as np


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Linear warmup, then constant or cosine decay to zero at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def eval_steps(max_steps: int, n_evals: int) -> list[int]:
    """Log-spaced evaluation steps from about max_steps/100 to max_steps (always included)."""
    first = max(1.0, max_steps / 100)
    steps = np.unique(np.round(np.geomspace(first, max_steps, n_evals)).astype(int))
    return [int(s) for s in steps]
