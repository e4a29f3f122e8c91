"""A run's checkpoint: its own slice of whatever pack trained it, in checkpoints/last.ckpt.

One format for every run, lone or packed (a lone run is a pack of one): the member's weights
and AdamW moments by parameter name, its two generators, its evaluation history, wall time and
the training loss since the last evaluation. So a run directory is self-contained, sweep status
sees "interrupted", and a resubmission may train the run alone or in a pack with any runs at
the same step. Lightning Fabric does the file IO; the write is atomic (a temporary file renamed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rhmscale.errors import UserError
from rhmscale.store.atomic import atomic_path

FORMAT = "rhmscale-run/2"


def save(fabric: Any, path: Path, state: dict[str, Any]) -> None:
    """state: run_id, step, params, exp_avg, exp_avg_sq (name -> tensor), batch_gen, noise_gen
    (generator states), history, wall_s, loss_since_eval ((sum, count))."""
    with atomic_path(path) as tmp:
        fabric.save(tmp, {"format": FORMAT, **state})


def load(fabric: Any, path: Path, run_id: str) -> dict[str, Any]:
    state = fabric.load(path)
    if state.get("format") != FORMAT:
        raise UserError(
            f"{path} is not a checkpoint of this rhmscale version ({FORMAT}); delete the run's "
            "checkpoints/ folder to restart it"
        )
    if state["run_id"] != run_id:
        raise UserError(f"{path} belongs to run {state['run_id']}, not {run_id}")
    return state
