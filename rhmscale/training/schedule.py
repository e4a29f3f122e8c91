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


def eval_steps(max_steps: int, n_evals: int, every: int = 0) -> list[int]:
    """Log-spaced evaluation steps from about max_steps/100 to max_steps (always included),
    and every `every` steps when it is not 0 (dense enough for early stopping to find the
    best point late in training, where log-spaced steps are far apart)."""
    first = max(1.0, max_steps / 100)
    steps = set(np.round(np.geomspace(first, max_steps, n_evals)).astype(int).tolist())
    if every:
        steps.update(range(every, max_steps + 1, every))
    return sorted(int(s) for s in steps)


def stopped_early(history: list[dict], patience: int, min_steps: int) -> bool:
    """Early stopping: `patience` evaluations in a row without a lower val/loss than the best
    before them, once past min_steps (0 patience: never)."""
    if not patience or not history or history[-1]["step"] < min_steps:
        return False
    losses = np.array([row["val/loss"] for row in history], dtype=float)
    if np.isnan(losses).all():
        return False
    return len(losses) - 1 - int(np.nanargmin(losses)) >= patience
