"""Evaluations of a pack's slots, batched (part of the Trainer, split out for length: these
methods use its slots, stack and step counters).

Evaluations are batched (Snapshots): at a run's evaluation step its weights and its training
loss since the last evaluation are copied aside, and the copies are evaluated together once half
the busy slots have one waiting, one waited eval_delay steps, a run reached max_steps, or before
a checkpoint. Runs that joined at other steps then share evaluations instead of each paying for
its own (an evaluation costs about as much for one member as for 27). The record is the same;
the cost is that an early stop is decided up to eval_delay steps late (those steps are thrown
away).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rhmscale.training.evaluation import (
    Diverged,
    EvaluationStopped,
    eval_generators,
    sample_and_score,
    stop_check,
    val_generators,
)
from rhmscale.training.member import Member
from rhmscale.training.schedule import stopped_early


@dataclass
class Snapshots:
    """Evaluations taken and not yet run: the run in slots[i] at steps[i], its weights then
    (stacked, one row each) and its training loss since its previous evaluation."""

    slots: list[int]
    members: list[Member]
    steps: list[int]
    params: dict[str, torch.Tensor]
    loss_sums: torch.Tensor
    counts: list[int]
    walls: list[float]


class SlotEvaluations:
    def due(self, slot: int) -> bool:
        """Whether the slot's run is at an evaluation step it has no row (or snapshot) for."""
        step, member = int(self.steps[slot]), self.slots[slot]
        if step not in self.eval_at or (member.history and member.history[-1]["step"] == step):
            return False
        return (slot, step) not in self.waiting()

    def snapshot(self, slots: list[int]) -> None:
        """The evaluations of these slots' runs at their current steps, set aside."""
        if not slots:
            return
        index = torch.tensor(slots, device=self.device)
        self.pending.append(
            Snapshots(
                slots=slots,
                members=[self.slots[k] for k in slots],
                steps=[int(self.steps[k]) for k in slots],
                params={n: p.detach().index_select(0, index) for n, p in self.stack.params.items()},
                loss_sums=self.train_step.pop_loss_sums(slots),
                counts=[int(self.loss_counts[k]) for k in slots],
                walls=[self.wall_s(k) for k in slots],
            )
        )
        self.loss_counts[slots] = 0

    def waiting(self) -> list[tuple[int, int]]:
        """(slot, step) of every evaluation set aside."""
        return [(k, s) for p in self.pending for k, s in zip(p.slots, p.steps, strict=True)]

    def evaluations_due(self) -> bool:
        """Half the busy slots wait for an evaluation, or one waited eval_delay steps, or one
        reached max_steps (it cannot go on)."""
        waiting = self.waiting()
        return (
            2 * len({k for k, _ in waiting}) >= len(self.busy())
            or any(self.steps[k] - s >= self.eval_delay for k, s in waiting)
            or any(self.steps[k] >= self.max_steps for k, _ in waiting)
        )

    def evaluate(self, should_stop: Callable[[], bool] | None) -> str | None:
        """Run every waiting evaluation at once and record each run's row, then its early stop
        or its judge's verdict. A stop request is heeded only while every waiting evaluation is
        of its run's current step (then it is redone on resume): "interrupted", checkpointed."""
        started = time.perf_counter()
        batch, self.pending = self.pending, []
        slots = [k for s in batch for k in s.slots]
        steps = [step for s in batch for step in s.steps]
        members = [m for s in batch for m in s.members]
        params = {n: torch.cat([s.params[n] for s in batch]) for n in self.names}
        current = all(self.steps[k] == step for k, step in zip(slots, steps, strict=True))
        configs = [m.config for m in members]
        index = torch.tensor(slots, device=self.device)
        check = stop_check(should_stop if current else None)
        try:
            with self.fabric.autocast():
                samples, val_loss = sample_and_score(
                    self.diffusion, self.stack.with_params(params, slots), self.config,
                    self.test_data.index_select(0, index),
                    eval_generators(configs, steps, self.device),
                    val_generators(configs, self.device), should_stop if current else None,
                )  # fmt: skip
            samples = samples.cpu().numpy()
            # Every member's parse before any row is recorded: a stop cuts none in half.
            measured = [self.measure(slot, samples[i], check) for i, slot in enumerate(slots)]
        except EvaluationStopped:
            # Each slot is waiting once, at its current step: its loss sum goes back for the
            # checkpoint, and the evaluation is redone on resume.
            self.train_step.loss_sum.index_add_(0, index, torch.cat([s.loss_sums for s in batch]))
            self.loss_counts[slots] += [c for s in batch for c in s.counts]
            self.on_note(f"stopped during the evaluation at step {max(steps)}; redone on resume")
            self.save(self.busy())
            return "interrupted"
        self.clock.evaluated(time.perf_counter() - started)
        self.evaluated_rows = True
        val_loss = val_loss.tolist()
        sums = torch.cat([s.loss_sums for s in batch]).tolist()
        counts = [c for s in batch for c in s.counts]
        walls = [w for s in batch for w in s.walls]
        finite = self.weights_finite(params, len(slots))
        for i, (slot, member, step) in enumerate(zip(slots, members, steps, strict=True)):
            if member.error is not None or member.stopped:
                continue  # an earlier row of this batch ended it
            train_loss = sums[i] / counts[i] if counts[i] else float("nan")
            values = {"train/loss": train_loss, "val/loss": val_loss[i]}
            broken = [name for name, value in values.items() if not math.isfinite(value)]
            if broken or not finite[i]:
                self.fail(member, Diverged(step, broken + ["weights"] * (not finite[i])))
                continue
            if isinstance(measured[i], Exception):
                self.fail(member, measured[i])
                continue
            try:
                self.recorders[slot].record(
                    member.history, step, samples[i], measured[i], val_loss=val_loss[i],
                    train_loss=train_loss, wall_s=walls[i], table=step in self.table_at,
                )  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - that run fails, the others go on
                self.fail(member, exc)
                continue
            self.judge(slot, member)
        return None

    def measure(
        self, slot: int, samples: Any, check: Callable[[], None] | None
    ) -> dict[str, float] | Exception:
        """The slot's generation metrics, or what kept them (that run fails, the others go
        on); EvaluationStopped passes."""
        try:
            return self.recorders[slot].measure(samples, check)
        except EvaluationStopped:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded in that run's failed.json
            return exc

    def judge(self, slot: int, member: Member) -> None:
        """Stop the run when its val/loss has not improved for its patience, or its judge
        stops it (asked once per evaluation row)."""
        train = member.config.train
        if member.judge is not None:
            member.verdict = member.judge(member.history[-1])
        if member.verdict or stopped_early(
            member.history, train.early_stop_patience, train.min_steps
        ):
            member.stopped = True
            self.train_step.active[slot] = 0.0  # its loss no longer reaches the update

    @staticmethod
    def weights_finite(params: dict[str, torch.Tensor], k: int) -> list[bool]:
        """Per member of stacked `params`: are all its weights finite (one device sync)."""
        finite = [torch.isfinite(p).reshape(k, -1).all(dim=1) for p in params.values()]
        return torch.stack(finite).all(dim=0).tolist()
