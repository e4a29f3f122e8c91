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

import torch

from rhmscale.store.atomic import atomic_path
from rhmscale.store.folders import RunDir
from rhmscale.store.reading import open_checked
from rhmscale.training.evaluation import Diverged

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
    open_checked(path).close()  # a regular file of a checkpoint's size: never a FIFO's wait
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


class SlotCheckpoints:
    """Each slot's run to its own checkpoint (part of the Trainer, split out for length: these
    methods use its slots, stack, optimiser and step counters)."""

    def member_states(self, slots: list[int]) -> dict[int, dict[str, Any]]:
        """Each given slot's run as its checkpoint holds it (also what a smaller pack resumes
        it from)."""
        if not slots:
            return {}
        index = torch.tensor(slots, device=self.device)
        moments = self.train_step.optimizer.moments()
        host = {
            key: [t.detach().index_select(0, index).cpu() for t in tensors]
            for key, tensors in (("params", self.stack.parameters()), *moments.items())
        }
        sums = self.train_step.loss_sum.tolist()
        states = {}
        for i, k in enumerate(slots):
            member = self.slots[k]
            states[k] = {
                "run_id": member.config.run_id(),
                "step": int(self.steps[k]),
                **{
                    key: {n: t[i].clone() for n, t in zip(self.names, tensors, strict=True)}
                    for key, tensors in host.items()
                },
                "batch_gen": self.batch_gens[k].get_state(),
                "noise_gen": self.noise_gens[k].get_state(),
                "history": member.history,
                "wall_s": self.wall_s(k),
                "loss_since_eval": (sums[k], int(self.loss_counts[k])),
            }
        return states

    def save(self, slots: list[int]) -> None:
        """The given slots' runs each to its own checkpoints/last.ckpt, their waiting
        evaluations first (a checkpoint holds every row before its step); never non-finite
        weights (that run has diverged: it fails instead)."""
        if any(k in slots for k, _ in self.waiting()):
            self.evaluate(None)
        # Runs still training, and those at max_steps (their final weights), not stopped ones.
        slots = [k for k in slots if k in self.busy() and not self.slots[k].stopped]
        if not slots:
            return
        finite = self.weights_finite(self.stack.params, self.k)
        for k in slots:
            if not finite[k]:
                self.fail(self.slots[k], Diverged(int(self.steps[k]), ["weights"]))
        for k, state in self.member_states([k for k in slots if finite[k]]).items():
            try:
                save(self.fabric, self.slots[k].run_dir.last_checkpoint, state)
            except Exception as exc:  # noqa: BLE001 - that run fails, the others go on
                self.fail(self.slots[k], exc)
