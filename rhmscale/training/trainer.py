"""The one trainer: K slots of one shape on one device, each training its own run exactly as the
run would train alone. A lone run is a pack of one slot.

Lightning Fabric owns the device, the precision (bf16 autocast on GPUs), checkpoint IO and the
SLURM environment (its auto-requeue off: submitit requeues); the loop is ours, short enough to
read top to bottom, and its step is compiled and captured as one CUDA graph (training.step).
Why Fabric rather than Lightning's Trainer with manual optimisation: not speed (the same graphed
step ran as fast, bench/results/one_trainer_h100.json) but fit. A pack is K runs, each with its
own evaluation, checkpoint file, W&B run and failure, stopped mid-loop by a signal; the Trainer
models one run (one logger, one checkpoint with its loop state, global_step advanced only
through its own optimiser wrappers).

Slots. The step is compiled and captured once for the pack's shape; what a slot holds (weights,
AdamW moments and step count, learning rate, weight decay, clipping, training rows) lives in
device tensors overwritten in place. So when a slot's run ends (done, stopped early, pruned,
failed, diverged) the slot takes the next run of that shape from `feed` at the run's own step
(0, or its checkpoint's) without recompiling; an empty slot's loss and learning rate are zero
(its weights do not move; its share of the step is still computed, until a re-stack).

Why a slot's trajectory equals its lone run's (tests/test_training.py checks it to 1e-5, also
for a run that joins mid-pack and one resumed into a slot):
- initial weights: built from its seed as its lone run builds them (initial_params);
- minibatches and diffusion noise: its own generators, seeded seed*2+1 and seed*2+2, drawn in
  the same order whatever the pack;
- AdamW is elementwise, and each slot has its own step count (its bias correction), learning
  rate at its own step, weight decay and gradient clipping by its own norm (training.adamw);
- evaluation at its own steps, with a generator seeded by (seed, step), of its weights then.

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
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from rhmscale.config import RunConfig, pack_key
from rhmscale.models import MaskedDiffusion
from rhmscale.models.stacked import initial_params, stack_denoisers
from rhmscale.rhm.data import Datasets
from rhmscale.store.folders import RunDir
from rhmscale.store.wandb_mirror import MirrorRun
from rhmscale.training import checkpoint
from rhmscale.training.adamw import make_optimizer
from rhmscale.training.compile_ahead import for_pack
from rhmscale.training.evaluation import (
    Diverged,
    EvalRecorder,
    EvaluationStopped,
    eval_generators,
    progress_postfix,
    sample_and_score,
    val_generators,
)
from rhmscale.training.fabric import progress_bar
from rhmscale.training.schedule import StepClock, Verdict, eval_steps, lr_factor, stopped_early
from rhmscale.training.step import WARMUP_STEPS, StepPlan, TrainStep

# How long the loop waits when every slot is empty and the feed is still setting a run up.
WAIT_FOR_FEED_S = 0.05


@dataclass(eq=False)
class Member:
    """One run in a slot."""

    config: RunConfig
    data: Datasets
    run_dir: RunDir
    mirror: MirrorRun | None = None  # its W&B run
    state: dict[str, Any] | None = None  # its checkpoint, to resume from
    history: list[dict[str, Any]] = field(default_factory=list)
    error: BaseException | None = None  # its own evaluation or checkpoint failed
    stopped: bool = False  # early: converged before max_steps, pruned or settled
    # Asked with each new evaluation row (a tuning trial's judge): a Verdict stops the run there.
    judge: Callable[[dict[str, Any]], Verdict | None] | None = None
    verdict: Verdict | None = None


class Feed(Protocol):
    """Where empty slots get their runs: next() a run set up for the pack's shape, or None
    when none is ready now; exhausted() once none will come."""

    def next(self) -> Member | None: ...

    def exhausted(self) -> bool: ...


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


class Trainer:
    """Trains the runs of K slots of one shape until none is left to train.

    members: the first runs of the slots, fresh or resumed (any steps); slots: how many (default
    one per member; more: the others start empty, with `room` training rows reserved each).
    fabric: make_fabric of the shape's (shared) device and precision. feed: where empty slots
    get the shape's next runs.
    Callbacks: on_step(trainer, losses (K,)) after every optimiser step (tests: trainer.steps
    and trainer.slots say which run is where);
    on_member_error(member, exc) when a run's evaluation or checkpoint raised, or it diverged:
    it leaves its slot, the others train on; on_member_done(member) when a run ended (its last
    evaluation is recorded: max_steps, or an early stop or a judge's verdict); on_note(text) a
    line for the logs of the runs in the slots.
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
        plan = StepPlan.of(train.compile, self.device)
        self.train_step = TrainStep(
            self.stack,
            self.diffusion,
            make_optimizer(self.stack.parameters(), k),
            self.place_data([m.data for m in members], room),
            train.batch_size,
            self.fabric.autocast,
            plan,
        )
        for slot, member in enumerate(members):
            self.fill(slot, member, fresh_weights_built=True)
        for slot in range(len(members), k):
            self.sizes[slot] = 1  # an empty slot draws nothing; a valid size all the same
        configs = [m.config for m in members]
        self.ahead = for_pack(configs, k) if plan.compile_ahead else None

    # --- slots ------------------------------------------------------------------------------
    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(self.device).manual_seed(seed)

    def place_data(self, datas: list[Datasets], room: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every slot's training rows in one device tensor, slot k's region from offsets[k]
        (its capacity: the largest set it held, `room` for an empty slot); the held-out sets
        stacked (K, n_test, n)."""
        train = [torch.as_tensor(d.train, dtype=torch.long) for d in datas]
        n = train[0].shape[-1]
        empty = self.k - len(datas)
        train += [torch.zeros((room, n), dtype=torch.long)] * empty
        self.sizes = [len(t) for t in train]
        self.capacity = list(self.sizes)
        self.starts = [int(s) for s in np.concatenate([[0], np.cumsum(self.sizes)[:-1]])]
        offsets = torch.as_tensor(self.starts, device=self.device).view(-1, 1)
        test = [torch.as_tensor(d.test, dtype=torch.long) for d in datas]
        test += [torch.zeros_like(test[0])] * empty
        self.test_data = torch.stack(test).to(self.device)
        return torch.cat(train).to(self.device), offsets

    def place_member_data(self, slot: int, data: Datasets) -> None:
        """A new run's training and held-out rows into slot `slot` (more room if it needs it:
        then the step is captured anew)."""
        rows = torch.as_tensor(data.train, dtype=torch.long).to(self.device)
        if len(rows) > self.capacity[slot]:
            self.capacity[slot] = len(rows)
            old, old_starts = self.train_step.train_data, self.starts
            self.starts = [int(s) for s in np.concatenate([[0], np.cumsum(self.capacity)[:-1]])]
            grown = old.new_zeros((sum(self.capacity), old.shape[-1]))
            for k, (a, b) in enumerate(zip(old_starts, self.starts, strict=True)):
                if k != slot:
                    grown[b : b + self.sizes[k]] = old[a : a + self.sizes[k]]
            offsets = torch.as_tensor(self.starts, device=self.device).view(-1, 1)
            self.train_step.set_data(grown, offsets)
        start = self.starts[slot]
        self.train_step.train_data[start : start + len(rows)] = rows
        self.sizes[slot] = len(rows)
        self.test_data[slot] = torch.as_tensor(data.test, dtype=torch.long).to(self.device)

    def fill(self, slot: int, member: Member, fresh_weights_built: bool = False) -> None:
        """Slot `slot` takes a run at its own step: 0 with fresh weights from its seed, or its
        checkpoint's (member.state) with everything the checkpoint holds."""
        cfg, state = member.config, member.state
        if pack_key(cfg) != self.shape:
            raise ValueError(f"run {cfg.run_id()} is not of this pack's shape")
        if not fresh_weights_built:
            self.stack.load_member(slot, initial_params(cfg.model, cfg.grammar, cfg.seed))
            self.place_member_data(slot, member.data)
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

        should_stop() is asked after every step and between evaluation batches (a preemption
        signal arrived); stop_at_step stops the same way once a run reaches that step (tests)."""
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
        self.train_step.draw(training, self.sizes, self.batch_gens, self.noise_gens)
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

    # --- evaluation -------------------------------------------------------------------------
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

    def wall_s(self, slot: int) -> float:
        return float(self.wall_offset[slot] + time.perf_counter() - self.filled_at[slot])

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
        try:
            with self.fabric.autocast():
                samples, val_loss = sample_and_score(
                    self.diffusion, self.stack.with_params(params, slots), self.config,
                    self.test_data.index_select(0, index),
                    eval_generators(configs, steps, self.device),
                    val_generators(configs, self.device), should_stop if current else None,
                )  # fmt: skip
        except EvaluationStopped:
            # Each slot is waiting once, at its current step: its loss sum goes back for the
            # checkpoint, and the evaluation is redone on resume.
            self.train_step.loss_sum.index_add_(0, index, torch.cat([s.loss_sums for s in batch]))
            self.loss_counts[slots] += [c for s in batch for c in s.counts]
            self.on_note(f"stopped during the evaluation at step {max(steps)}; redone on resume")
            self.save(self.busy())
            return "interrupted"
        self.clock.evaluated(time.perf_counter() - started)
        samples, val_loss = samples.cpu().numpy(), val_loss.tolist()
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
            try:
                self.recorders[slot].record(
                    member.history, step, samples[i], val_loss=val_loss[i],
                    train_loss=train_loss, wall_s=walls[i], table=step in self.table_at,
                )  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - that run fails, the others go on
                self.fail(member, exc)
                continue
            self.judge(slot, member)
        return None

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

    # --- checkpoints ------------------------------------------------------------------------
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
                checkpoint.save(self.fabric, self.slots[k].run_dir.last_checkpoint, state)
            except Exception as exc:  # noqa: BLE001 - that run fails, the others go on
                self.fail(self.slots[k], exc)
