"""A run's checkpoint: its own slice of whatever pack trained it, in checkpoints/last.ckpt.

One format for every run, lone or packed (a lone run is a pack of one): the member's weights
and AdamW moments by parameter name, its two generators, its evaluation history, wall time and
the training loss since the last evaluation. So a run directory is self-contained, sweep status
sees "interrupted", and a resubmission may train the run alone or in a pack with any runs at
the same step. Lightning Fabric does the file IO.

One bad file never costs the whole run: a new checkpoint is written whole to next.ckpt first,
then last.ckpt becomes prev.ckpt and next.ckpt becomes last.ckpt; resuming takes the newest
that loads.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from rhmscale.store.atomic import atomic_path
from rhmscale.store.folders import RunDir

FORMAT = "rhmscale-run/2"


def save(fabric: Any, path: Path, state: dict[str, Any]) -> None:
    """state: run_id, step, params, exp_avg, exp_avg_sq (name -> tensor), batch_gen, noise_gen
    (generator states), history, wall_s, loss_since_eval ((sum, count))."""
    following = path.with_name("next.ckpt")
    with atomic_path(following) as tmp:
        fabric.save(tmp, {"format": FORMAT, **state})
    if path.exists():
        os.replace(path, path.with_name("prev.ckpt"))
    os.replace(following, path)


def load(fabric: Any, path: Path, run_id: str) -> dict[str, Any]:
    state = fabric.load(path)
    if state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a checkpoint of this rhmscale version ({FORMAT})")
    if state["run_id"] != run_id:
        raise ValueError(f"{path} belongs to run {state['run_id']}, not {run_id}")
    return state


def load_newest(fabric: Any, store: RunDir, run_id: str, log: logging.Logger) -> dict | None:
    """The newest checkpoint of the run that loads; None (start from scratch) when none does.
    A damaged one is said in the run's log and set aside, not retried forever."""
    for path in (store.last_checkpoint, store.previous_checkpoint):
        if not path.exists():
            continue
        try:
            return load(fabric, path, run_id)
        except Exception as exc:  # noqa: BLE001 - a damaged file of any kind: try the older
            log.warning("checkpoint %s cannot be resumed (%s); set aside", path, exc)
            os.replace(path, path.with_name(path.name + ".damaged"))
    return None
