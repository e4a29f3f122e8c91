"""The one trainer: K slots of one shape on one device, each training its own run exactly as the
run would train alone. A lone run is a pack of one slot.

Lightning Fabric owns the device, precision (bf16 autocast on GPUs), checkpoint IO and the SLURM
environment (auto-requeue off: submitit requeues); the loop is ours, its step compiled and
captured as one CUDA graph (training.step). Fabric, not Lightning's Trainer: the same speed
(bench/results/one_trainer_h100.json), but a pack is K runs with their own evaluations,
checkpoints, W&B runs and failures, where the Trainer models one run.

Slots. The step is compiled and captured once for the pack's shape; what a slot holds (weights,
AdamW moments and step count, learning rate, weight decay, clipping, training rows) lives in
device tensors overwritten in place. So when a slot's run ends (done, stopped early, pruned,
failed, diverged) the slot takes the next run of that shape from `feed` at the run's own step
(0, or its checkpoint's) without recompiling; an empty slot's loss and learning rate are zero
(its weights do not move; its share of the step is still computed, until a re-stack).

Why a slot's trajectory equals its lone run's (checked to 1e-5 in tests/test_training.py, and in
tests/test_slots.py for a run that joins mid-pack and one resumed into a slot):
- initial weights: built from its seed as its lone run builds them (initial_params);
- minibatches and diffusion noise: its own generators, seeded seed*2+1 and seed*2+2, drawn in
  the same order whatever the pack;
- AdamW is elementwise, and each slot has its own step count (its bias correction), learning
  rate at its own step, weight decay and gradient clipping by its own norm (training.adamw);
- evaluation at its own steps, with a generator seeded by (seed, step), of its weights then.

Evaluations are batched across slots (training.slot_evaluation); checkpoints are written per
slot (training.checkpoint).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from rhmscale.config import pack_key
from rhmscale.models import MaskedDiffusion
from rhmscale.models.stacked import initial_params, stack_denoisers
from rhmscale.rhm.data import Datasets
from rhmscale.training.adamw import make_optimizer
from rhmscale.training.checkpoint import SlotCheckpoints
from rhmscale.training.compile_ahead import for_pack
from rhmscale.training.evaluation import (
    EvalRecorder,
    progress_postfix,
)
from rhmscale.training.fabric import progress_bar
from rhmscale.training.member import Feed, Member
from rhmscale.training.schedule import StepClock, eval_steps, lr_factor
from rhmscale.training.slot_evaluation import SlotEvaluations, Snapshots
from rhmscale.training.step import WARMUP_STEPS, StepPlan, TrainStep

# How long the loop waits when every slot is empty and the feed is still setting a run up.
WAIT_FOR_FEED_S = 0.05


class Trainer(SlotEvaluations, SlotCheckpoints):
    """Trains the runs of K slots of one shape until none is left to train.

    members: the first runs of the slots, fresh or resumed (any steps); slots: how many (default
    one per member; more: the others start empty, with `room` training rows reserved each).
    fabric: make_fabric of the shape's (shared) device and precision. feed: where empty slots
    get the shape's next runs.
    Callbacks: on_step(trainer, losses (K,)) after every optimiser step (tests: trainer.steps
    and trainer.slots say which run is where);
    on_member_error(member, exc) when a run's evaluation or checkpoint raised, or it diverged:
    it leaves its slot, the others train on; on_member_done(member) when a run ended (its last
    evaluation is recorded: max_steps, or an early stop or a judge's verdict); on_member_start
    (member) when a run takes a slot; on_note(text) a line for the logs of the runs in the slots.
    """

    def __init__(
        self,
        members: list[Member],
        fabric: Any,
        *,
        slots: int | None = None,
        room: int = 0,
        feed: Feed | None = None,
        on_step: Callable[[Trainer, torch.Tensor], None] | None = None,
        on_member_error: Callable[[Member, BaseException], None] | None = None,
        on_member_done: Callable[[Member], None] | None = None,
        on_member_start: Callable[[Member], None] | None = None,
        on_note: Callable[[str], None] | None = None,
    ) -> None:
        if not members:
            raise ValueError("a pack needs at least one run")
        gpu = fabric.device.type == "cuda"
        self.clock = StepClock(WARMUP_STEPS, sync=torch.cuda.synchronize if gpu else lambda: None)
        self.config = cfg = members[0].config
        self.shape = pack_key(cfg)
        self.k = k = max(slots or 0, len(members))
        self.feed = feed
        self.on_step, self.on_member_error = on_step, on_member_error
        self.on_member_done = on_member_done
        self.on_member_start = on_member_start or (lambda member: None)
        self.on_note = on_note or (lambda message: None)
        self.fabric, self.device = fabric, fabric.device
        train = cfg.train
        self.max_steps = train.max_steps
        self.eval_at = set(eval_steps(train.max_steps, cfg.eval.n_evals, cfg.eval.every))
        self.eval_at.add(train.max_steps)  # the final evaluation, also when n_evals=1
        # W&B sample tables at the log-spaced evaluations only: a table per member at every
        # evaluation cost more host time than the rest of its record (0.4 s a pack of 27).
        self.table_at = set(eval_steps(train.max_steps, cfg.eval.n_evals))
        self.eval_delay = cfg.eval.every or max(1, train.max_steps // 20)
        self.diffusion = MaskedDiffusion(
            cfg.grammar.v, cfg.diffusion.schedule, cfg.diffusion.antithetic
        )
        seeds = [m.config.seed for m in members] + [0] * (k - len(members))  # empty: any weights
        self.stack = stack_denoisers(cfg.model, cfg.grammar, seeds)
        self.stack.to(self.device)
        self.names = list(self.stack.params)
        # Per slot; None / 0 while it is empty.
        self.slots: list[Member | None] = [None] * k
        self.recorders: list[EvalRecorder | None] = [None] * k
        self.batch_gens: list[torch.Generator | None] = [None] * k
        self.noise_gens: list[torch.Generator | None] = [None] * k
        self.steps = np.zeros(k, dtype=np.int64)  # each slot's run's own step
        self.loss_counts = np.zeros(k, dtype=np.int64)  # its steps since its last evaluation
        self.wall_offset, self.filled_at = np.zeros(k), np.zeros(k)
        self.pending: list[Snapshots] = []
        self.evaluated_rows = False  # an evaluation recorded rows since settle last looked
        plan = StepPlan.of(train.compile, self.device)
        self.train_step = TrainStep(
            self.stack,
            self.diffusion,
            make_optimizer(self.stack.parameters(), k),
            self.training_rows([m.data for m in members], room),
            train.batch_size,
            self.fabric.autocast,
            plan,
        )
        for slot, member in enumerate(members):
            self.fill(slot, member, fresh_weights_built=True)
        for slot in range(len(members), k):
            self.train_step.sizes[slot] = 1  # an empty slot draws nothing; a valid size anyway
        configs = [m.config for m in members]
        self.ahead = for_pack(configs, k) if plan.compile_ahead else None

    # --- slots ------------------------------------------------------------------------------
    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(self.device).manual_seed(seed)

    def training_rows(self, datas: list[Datasets], room: int) -> list[torch.Tensor]:
        """The first runs' training sets, `room` rows for each empty slot; the held-out sets
        stacked on the device (K, n_test, n)."""
        train = [torch.as_tensor(d.train, dtype=torch.long) for d in datas]
        test = [torch.as_tensor(d.test, dtype=torch.long) for d in datas]
        empty = self.k - len(datas)
        test += [torch.zeros_like(test[0])] * empty
        self.test_data = torch.stack(test).to(self.device)
        return train + [train[0].new_zeros((room, train[0].shape[-1]))] * empty

    def fill(self, slot: int, member: Member, fresh_weights_built: bool = False) -> None:
        """Slot `slot` takes a run at its own step: 0 with fresh weights from its seed, or its
        checkpoint's (member.state) with everything the checkpoint holds."""
        cfg, state = member.config, member.state
        if pack_key(cfg) != self.shape:
            raise ValueError(f"run {cfg.run_id()} is not of this pack's shape")
        if not fresh_weights_built:
            self.stack.load_member(slot, initial_params(cfg.model, cfg.grammar, cfg.seed))
            self.train_step.place(slot, torch.as_tensor(member.data.train, dtype=torch.long))
            self.test_data[slot] = torch.as_tensor(member.data.test, dtype=torch.long)
        if state is not None:
            self.stack.load_member(slot, state["params"])
        step = int(state["step"]) if state else 0
        moments = {m: state[m] for m in ("exp_avg", "exp_avg_sq")} if state else None
        self.train_step.optimizer.set_member(
            slot, step, cfg.train.weight_decay, moments, self.names
        )
        self.train_step.max_norm[slot] = cfg.train.grad_clip
        self.batch_gens[slot] = self.generator(cfg.seed * 2 + 1)
        self.noise_gens[slot] = self.generator(cfg.seed * 2 + 2)
        loss_sum, count = state["loss_since_eval"] if state else (0.0, 0)
        if state is not None:
            self.batch_gens[slot].set_state(state["batch_gen"])
            self.noise_gens[slot].set_state(state["noise_gen"])
        member.history = list(state["history"]) if state else []
        self.train_step.loss_sum[slot] = loss_sum
        self.steps[slot], self.loss_counts[slot] = step, count
        self.wall_offset[slot] = float(state["wall_s"]) if state else 0.0
        self.filled_at[slot] = time.perf_counter()
        self.recorders[slot] = EvalRecorder(cfg, member.data, member.run_dir, member.mirror)
        self.slots[slot] = member
        member.state = None  # in the slot now; the host copy is not needed
        self.train_step.active[slot] = 1.0
        self.on_member_start(member)
        if self.due(slot):  # resumed at an evaluation a stop request cut short: redo it
            self.snapshot([slot])

    def free(self, slot: int) -> None:
        self.slots[slot] = self.recorders[slot] = None
        self.batch_gens[slot] = self.noise_gens[slot] = None
        self.train_step.active[slot] = 0.0

    def refill(self) -> None:
        """Empty slots take the feed's runs that are ready."""
        if self.feed is None:
            return
        for slot in [k for k, m in enumerate(self.slots) if m is None]:
            member = self.feed.next()
            if member is None:
                return
            step = member.state["step"] if member.state else 0
            self.fill(slot, member)
            self.on_note(f"run {member.config.run_id()} took slot {slot} at its step {step}")

    def drained(self) -> bool:
        """No run in a slot, and none to come."""
        return not self.busy() and (self.feed is None or self.feed.exhausted())

    def training(self) -> list[int]:
        """The slots whose run takes the next step."""
        return [
            k
            for k, m in enumerate(self.slots)
            if m is not None
            and m.error is None
            and not m.stopped
            and self.steps[k] < self.max_steps
        ]

    def busy(self) -> list[int]:
        """The slots holding a run (training, or waiting for its evaluations)."""
        return [k for k, m in enumerate(self.slots) if m is not None and m.error is None]

    # --- the loop ---------------------------------------------------------------------------
    def fit(
        self,
        *,
        stop_at_step: int | None = None,
        should_stop: Callable[[], bool] | None = None,
        progress: bool = False,
    ) -> str:
        """Train until no slot has a run and the feed has none ("completed"); checkpoint and
        return "interrupted" when asked to stop; "restack" when half the slots are empty for
        good and a smaller pack would pay for its start-up.

        should_stop() is asked after every step and before every denoiser call of an evaluation
        (a preemption signal arrived); stop_at_step stops the same way once a run reaches that
        step (tests)."""
        try:
            return self._fit(stop_at_step, should_stop, progress)
        finally:
            if self.ahead is not None:
                self.on_note(self.ahead.close())

    def _fit(self, stop_at_step, should_stop, progress) -> str:
        with progress_bar(progress, self.max_steps, int(self.steps[0])) as bar:
            while True:
                if (ended := self.settle(bar, should_stop)) is not None:
                    return ended
                training = self.training()
                if not training:
                    if self.drained():
                        return "completed"
                    if not self.pending:  # the feed is setting a run up: wait for it
                        time.sleep(WAIT_FOR_FEED_S)
                    continue
                losses = self.advance(training)
                if self.on_step is not None:
                    self.on_step(self, losses.clone())
                self.log_train_loss(losses, training)
                self.snapshot([k for k in training if self.due(k)])
                if (
                    self.pending
                    and self.evaluations_due()
                    and (ended := self.evaluate(should_stop))
                ):
                    return ended
                every = self.config.train.checkpoint_every
                at = self.steps[training]
                if saving := [
                    k
                    for k, s in zip(training, at, strict=True)
                    if s % every == 0 or s == self.max_steps
                ]:
                    self.save(saving)
                bar.update(1)
                stop = (
                    stop_at_step is not None and self.steps[training].max() >= stop_at_step
                ) or (should_stop is not None and should_stop())
                if stop and (ended := self.interrupt()):
                    return ended

    def settle(self, bar: Any, should_stop: Callable[[], bool] | None) -> str | None:
        """Between steps: run the waiting evaluations when it is time, hand over the runs that
        ended, fill the empty slots; "interrupted" or "restack" to end fit."""
        if self.pending and self.evaluations_due() and (ended := self.evaluate(should_stop)):
            return ended
        if self.evaluated_rows:  # the progress bar's metrics change with an evaluation only
            self.evaluated_rows = False
            rows = [m.history[-1] for m in self.slots if m is not None and m.history]
            bar.set_postfix(progress_postfix(rows, self.config.grammar.L), refresh=False)
        self.hand_over()
        self.refill()
        if self.restack_pays():
            self.save(self.training())
            return "restack"
        return None

    def interrupt(self) -> str | None:
        """A stop request: the waiting evaluations run (they are of steps already trained
        past), ended runs are handed over, the others checkpoint: "interrupted"; None when no
        run is left to train (completed)."""
        if self.pending:
            self.evaluate(None)
        self.hand_over()
        training = self.training()
        if not training:
            return None
        self.save(training)
        return "interrupted"

    def advance(self, training: list[int] | None = None) -> torch.Tensor:
        """One optimiser step of the training slots; the losses (K,), overwritten by the next
        step."""
        training = self.training() if training is None else training
        lrs = [0.0] * self.k
        for k in training:
            t = self.slots[k].config.train
            lrs[k] = t.lr * lr_factor(
                int(self.steps[k]), t.warmup_steps, t.max_steps, t.lr_schedule
            )
        self.train_step.draw(training, self.batch_gens, self.noise_gens)
        losses = self.train_step(lrs)
        self.steps[training] += 1
        self.loss_counts[training] += 1
        self.clock.stepped()
        if self.ahead is not None and self.ahead.ready() is not None:
            ahead, self.ahead = self.ahead, None  # the helper process has ended
            if ahead.ready():
                self.train_step.use_compiled()  # from the caches it filled: seconds
            self.on_note(ahead.close(int(self.steps[training].max())))
        return losses

    def hand_over(self) -> None:
        """Runs that ended (their final evaluation recorded, or failed) leave their slots."""
        waiting = {k for k, _ in self.waiting()}
        for k, m in enumerate(self.slots):
            if m is None or k in waiting:
                continue
            if m.error is None:
                if not (m.stopped or self.steps[k] >= self.max_steps):
                    continue
                if self.on_member_done is not None:
                    self.on_member_done(m)
            self.free(k)

    def restack_pays(self) -> bool:
        """Half the slots or more are empty, the feed has nothing, and a smaller pack would
        save more than twice its start-up (schedule.StepClock)."""
        if (
            self.ahead is not None
            or self.pending
            or not (self.feed is None or self.feed.exhausted())
        ):
            return False  # its compilation would be thrown away, and the new pack's begun
        training = self.training()
        if not training:
            return False
        steps_left = self.max_steps - int(self.steps[training].min())
        freed = 1 - len(training) / self.k
        return len(training) <= self.k // 2 and self.clock.restack_pays(steps_left, freed)

    def fail(self, member: Member, exc: BaseException) -> None:
        member.error = exc
        slot = self.slots.index(member)
        self.train_step.active[slot] = 0.0
        if self.on_member_error is not None:
            self.on_member_error(member, exc)

    def log_train_loss(self, losses: torch.Tensor, training: list[int]) -> None:
        """train/loss_step to each run's W&B run every 50 of its steps (one device sync)."""
        due = [k for k in training if self.steps[k] % 50 == 0 and self.slots[k].mirror]
        if not due:
            return
        values = losses.tolist()
        for k in due:
            member = self.slots[k]
            try:
                member.mirror.log({"train/loss_step": values[k]}, int(self.steps[k]))
            except Exception as exc:  # noqa: BLE001 - that run fails, the others go on
                self.fail(member, exc)

    def wall_s(self, slot: int) -> float:
        return float(self.wall_offset[slot] + time.perf_counter() - self.filled_at[slot])
