"""The one trainer: K >= 1 runs of one shape trained together on one device, each as if alone.
A lone run is a pack of one.

Lightning Fabric owns the device, the precision (bf16 autocast on GPUs), checkpoint IO and the
SLURM environment (its auto-requeue off: submitit requeues); the loop is ours, short enough to
read top to bottom, and its step is compiled and captured as one CUDA graph (training.step).
Why Fabric rather than Lightning's Trainer with manual optimisation: not speed (the same graphed
step ran as fast, bench/results/one_trainer_h100.json) but fit. A pack is K runs, each with its
own evaluation, checkpoint file, W&B run and failure, stopped mid-loop by a signal; the Trainer
models one run (one logger, one checkpoint with its loop state, global_step advanced only
through its own optimiser wrappers), which made the old lone-run checkpoints a format of their
own that packs could read and lone runs could not.

Why member k's trajectory equals its lone run's (tests/test_training.py checks it to 1e-5):
- initial weights: stack_denoisers seeds each member with its own seed;
- minibatches and diffusion noise: per-member generators seeded seed*2+1 and seed*2+2, drawn
  in the same order whatever the pack;
- one AdamW over the stacked tensors is elementwise, hence per member; each member has its own
  learning rate, warm-up, schedule and weight decay (training.adamw: torch's fused AdamW when
  the pack shares them) and its gradients are clipped by its own norm;
- evaluation at the same steps, with a generator seeded by (seed, step).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rhmscale.config import RunConfig
from rhmscale.models import MaskedDiffusion
from rhmscale.models.stacked import stack_denoisers
from rhmscale.rhm.data import Datasets
from rhmscale.store.folders import RunDir
from rhmscale.store.wandb_mirror import MirrorRun
from rhmscale.training import checkpoint
from rhmscale.training.adamw import make_optimizer, recipes_of
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
from rhmscale.training.schedule import (
    StepClock,
    Verdict,
    eval_steps,
    lr_factor,
    stopped_early,
)
from rhmscale.training.step import WARMUP_STEPS, StepPlan, TrainStep


@dataclass
class Member:
    """One run of a pack."""

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


class Trainer:
    """Trains the members of one pack from their common step to max_steps.

    All members start at the same step: fresh, or resumed from checkpoints of that step.
    fabric: make_fabric(config) of the pack's (shared) device and precision.
    on_step(step, losses (K,)) is called after every optimiser step (tests); on_member_error(k,
    exc) when member k's evaluation or checkpoint raised: it trains on with the others but is
    no longer recorded; on_member_done(k) when member k stopped early (train.early_stop_patience:
    its record is final and its loss leaves the update; once half the pack has stopped and a
    smaller pack would pay for its start-up, fit returns "restack" so that the rest go on
    without the dead weight).
    """

    def __init__(
        self,
        members: list[Member],
        fabric: Any,
        *,
        on_step: Callable[[int, torch.Tensor], None] | None = None,
        on_member_error: Callable[[int, BaseException], None] | None = None,
        on_member_done: Callable[[int], None] | None = None,
        on_note: Callable[[str], None] | None = None,
    ) -> None:
        gpu = fabric.device.type == "cuda"
        self.clock = StepClock(WARMUP_STEPS, sync=torch.cuda.synchronize if gpu else lambda: None)
        steps = {m.state["step"] if m.state else 0 for m in members}
        if len(steps) != 1:
            raise ValueError(f"members of one pack must resume from one step, got {steps}")
        self.members = members
        self.config = cfg = members[0].config
        self.step = steps.pop()
        self.on_step, self.on_member_error = on_step, on_member_error
        self.on_member_done = on_member_done
        self.on_note = on_note or (lambda message: None)
        self.fabric, self.device = fabric, fabric.device
        self.eval_at = set(eval_steps(cfg.train.max_steps, cfg.eval.n_evals, cfg.eval.every))
        # W&B sample tables at the log-spaced evaluations only: a table per member at every
        # evaluation cost more host time than the rest of its record (0.4 s a pack of 27).
        self.table_at = set(eval_steps(cfg.train.max_steps, cfg.eval.n_evals))
        self.diffusion = MaskedDiffusion(
            cfg.grammar.v, cfg.diffusion.schedule, cfg.diffusion.antithetic
        )
        self.stack = stack_denoisers(cfg.model, cfg.grammar, [m.config.seed for m in members])
        self.stack.to(self.device)
        self.recorders = [EvalRecorder(m.config, m.data, m.run_dir, m.mirror) for m in members]
        self.batch_gens = [self.generator(m.config.seed * 2 + 1) for m in members]
        self.noise_gens = [self.generator(m.config.seed * 2 + 2) for m in members]
        self.wall_offset = np.zeros(len(members))
        self.loss_count = 0
        plan = StepPlan.of(cfg.train.compile, self.device)
        self.recipes = recipes_of([m.config.train for m in members])
        optimizer = make_optimizer(self.stack.parameters(), self.recipes)
        clips = [m.config.train.grad_clip for m in members]
        self.train_step = TrainStep(
            self.stack,
            self.diffusion,
            optimizer,
            self.place_data(),
            cfg.train.batch_size,
            torch.tensor(clips, device=self.device) if any(clips) else None,
            self.fabric.autocast,
            plan,
        )
        if self.step:
            self.restore(optimizer)
        self.ahead = for_pack([m.config for m in members]) if plan.compile_ahead else None

    # --- set-up -----------------------------------------------------------------------------
    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(self.device).manual_seed(seed)

    def place_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All training sets in one device tensor (member k's rows from offsets[k]); the
        held-out sets stacked (K, n_test, n)."""
        train = [torch.as_tensor(m.data.train, dtype=torch.long) for m in self.members]
        self.sizes = [len(t) for t in train]
        starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        offsets = torch.as_tensor(starts, device=self.device).view(-1, 1)
        test = [torch.as_tensor(m.data.test, dtype=torch.long) for m in self.members]
        self.test_data = torch.stack(test).to(self.device)
        return torch.cat(train).to(self.device), offsets

    def restore(self, optimizer: torch.optim.Optimizer) -> None:
        states = [m.state for m in self.members]
        for k, state in enumerate(states):
            self.stack.load_member(k, state["params"])
            self.batch_gens[k].set_state(state["batch_gen"])
            self.noise_gens[k].set_state(state["noise_gen"])
            self.members[k].history = list(state["history"])
            self.wall_offset[k] = float(state["wall_s"])
            self.train_step.loss_sum[k] = state["loss_since_eval"][0]
        self.loss_count = states[0]["loss_since_eval"][1]
        adam = optimizer.state_dict()
        adam["state"] = {
            i: {
                "step": torch.tensor(float(self.step)),
                **{
                    moment: torch.stack([state[moment][name] for state in states])
                    for moment in ("exp_avg", "exp_avg_sq")
                },
            }
            for i, name in enumerate(self.stack.params)
        }
        optimizer.load_state_dict(adam)

    # --- the loop ---------------------------------------------------------------------------
    def fit(
        self,
        *,
        stop_at_step: int | None = None,
        should_stop: Callable[[], bool] | None = None,
        progress: bool = False,
    ) -> str:
        """Train every member to max_steps or its early stop ("completed"); checkpoint and
        return "interrupted" when asked to stop; "restack" when half the pack has stopped.

        should_stop() is asked after every step and between evaluation batches (a preemption
        signal arrived); stop_at_step stops the same way at a given step (tests)."""
        self.started = time.perf_counter()
        try:
            return self._fit(stop_at_step, should_stop, progress)
        finally:
            if self.ahead is not None:
                self.on_note(self.ahead.close())

    def _fit(self, stop_at_step, should_stop, progress) -> str:
        train = self.config.train
        with progress_bar(progress, train.max_steps, self.step) as bar:
            # Resumed at an evaluation a stop request cut short (or at max_steps): redo it.
            if self.step in self.eval_at and (ended := self.evaluation(bar, should_stop)):
                return ended
            while self.step < train.max_steps and any(True for _ in self.active()):
                losses = self.advance()
                if self.on_step is not None:
                    self.on_step(self.step, losses.clone())
                if self.step % 50 == 0:
                    self.log_train_loss(losses)
                if self.step in self.eval_at and (ended := self.evaluation(bar, should_stop)):
                    return ended
                saved = self.step % train.checkpoint_every == 0 or self.step == train.max_steps
                if saved:
                    self.save()
                bar.update(1)
                stop = (stop_at_step is not None and self.step >= stop_at_step) or (
                    should_stop is not None and should_stop()
                )
                if stop and self.step < train.max_steps:
                    if not saved:
                        self.save()
                    return "interrupted"
            # The final evaluation, when max_steps is not among eval_at (eval.n_evals=1).
            return self.evaluation(bar, should_stop) or "completed"

    def evaluation(self, bar: Any, should_stop: Callable[[], bool] | None) -> str | None:
        """This step's evaluation of the members without one, then their early stops: None to
        go on, "interrupted" (checkpointed) when a stop request cut it short, or "restack"."""
        started = time.perf_counter()
        try:
            if not self.evaluate(should_stop):
                return None
        except EvaluationStopped:
            self.on_note(f"stopped during the evaluation at step {self.step}; redone on resume")
            self.save()
            return "interrupted"
        self.clock.evaluated(time.perf_counter() - started)
        self.stop_converged()
        rows = [m.history[-1] for _, m in self.active() if m.history]
        bar.set_postfix(progress_postfix(rows, self.config.grammar.L), refresh=False)
        if self.restack_pays():
            self.save()
            return "restack"
        return None

    def advance(self) -> torch.Tensor:
        """One optimiser step of every member; its losses (K,), overwritten by the next step."""
        lrs = [
            t.lr * lr_factor(self.step, t.warmup_steps, t.max_steps, t.lr_schedule)
            for t in self.recipes
        ]
        self.train_step.draw(self.sizes, self.batch_gens, self.noise_gens)
        losses = self.train_step(lrs)
        self.step += 1
        self.loss_count += 1
        self.clock.stepped()
        if self.ahead is not None and self.ahead.ready() is not None:
            ahead, self.ahead = self.ahead, None  # the helper process has ended
            if ahead.ready():
                self.train_step.use_compiled()  # from the caches it filled: seconds
            self.on_note(ahead.close(self.step))
        return losses

    def active(self) -> Iterator[tuple[int, Member]]:
        """The members still training: not failed, not stopped early."""
        return ((k, m) for k, m in enumerate(self.members) if m.error is None and not m.stopped)

    def stop_converged(self) -> None:
        """Stop the members whose val/loss has not improved for their patience, and those their
        judge stops (asked once per evaluation row)."""
        for k, m in list(self.active()):
            train = m.config.train
            if m.judge is not None and m.history and m.history[-1]["step"] == self.step:
                m.verdict = m.judge(m.history[-1])
            if m.verdict or stopped_early(m.history, train.early_stop_patience, train.min_steps):
                m.stopped = True
                self.train_step.active[k] = 0.0  # its loss no longer reaches the update
                if self.on_member_done is not None:
                    self.on_member_done(k)

    def restack_pays(self) -> bool:
        """Half the pack or more is done (stopped or failed) while others train, and a smaller
        pack would save more than twice its start-up (schedule.StepClock)."""
        if self.ahead is not None:
            return False  # its compilation would be thrown away, and the new pack's begun
        k, training = len(self.members), sum(1 for _ in self.active())
        steps_left = self.config.train.max_steps - self.step
        return 0 < training <= k // 2 and self.clock.restack_pays(steps_left, 1 - training / k)

    def fail(self, k: int, exc: BaseException) -> None:
        self.members[k].error = exc
        if self.on_member_error is not None:
            self.on_member_error(k, exc)

    def log_train_loss(self, losses: torch.Tensor) -> None:
        """train/loss_step to each member's W&B run every 50 steps (one device sync)."""
        if not any(m.mirror is not None for _, m in self.active()):
            return
        values = losses.tolist()
        for k, m in self.active():
            if m.mirror is not None:
                try:
                    m.mirror.log({"train/loss_step": values[k]}, self.step)
                except Exception as exc:  # noqa: BLE001 - that member fails, the others go on
                    self.fail(k, exc)

    # --- evaluation and checkpoints -------------------------------------------------------
    def wall_s(self) -> np.ndarray:
        return self.wall_offset + (time.perf_counter() - self.started)

    def evaluate(self, should_stop: Callable[[], bool] | None = None) -> bool:
        """Evaluate all members at once; record the rows of those without one at this step
        (False when none lacked one). EvaluationStopped when should_stop() becomes true."""
        step = self.step
        todo = [k for k, m in self.active() if not (m.history and m.history[-1]["step"] == step)]
        if not todo:
            return False
        configs = [m.config for m in self.members]
        gens = eval_generators(configs, step, self.device)
        with self.fabric.autocast():
            samples, val_loss = sample_and_score(
                self.diffusion, self.stack, self.config, self.test_data, gens,
                val_generators(configs, self.device), should_stop,
            )  # fmt: skip
        samples, val_loss = samples.cpu().numpy(), val_loss.tolist()
        train_loss = self.train_step.pop_mean_losses(self.loss_count)
        self.loss_count = 0
        wall = self.wall_s()
        weights_ok = self.weights_finite()
        for k in todo:
            values = {"train/loss": train_loss[k], "val/loss": val_loss[k]}
            broken = [name for name, value in values.items() if not math.isfinite(value)]
            if broken or not weights_ok[k]:
                self.fail(k, Diverged(step, broken + ["weights"] * (not weights_ok[k])))
                continue
            try:
                self.recorders[k].record(
                    self.members[k].history,
                    step,
                    samples[k],
                    val_loss=val_loss[k],
                    train_loss=train_loss[k],
                    wall_s=float(wall[k]),
                    table=step in self.table_at,
                )
            except Exception as exc:  # noqa: BLE001 - that member fails, the others go on
                self.fail(k, exc)
        return True

    def member_states(self) -> dict[int, dict[str, Any]]:
        """Each training member's slice of the pack: what its checkpoint holds, and what a
        smaller pack resumes it from."""
        names = list(self.stack.params)
        host = {
            "params": [p.detach().cpu() for p in self.stack.parameters()],
            **{key: [t.cpu() for t in ts] for key, ts in self.train_step.state().items()},
        }
        sums, wall = self.train_step.loss_sum.tolist(), self.wall_s()
        return {
            k: {
                "run_id": m.config.run_id(),
                "step": self.step,
                **{
                    key: {n: t[k].clone() for n, t in zip(names, tensors, strict=True)}
                    for key, tensors in host.items()
                },
                "batch_gen": self.batch_gens[k].get_state(),
                "noise_gen": self.noise_gens[k].get_state(),
                "history": m.history,
                "wall_s": float(wall[k]),
                "loss_since_eval": (sums[k], self.loss_count),
            }
            for k, m in self.active()
        }

    def weights_finite(self) -> list[bool]:
        """Per member: are all its weights finite (one device sync)."""
        k = len(self.members)
        finite = [torch.isfinite(p).reshape(k, -1).all(dim=1) for p in self.stack.parameters()]
        return torch.stack(finite).all(dim=0).tolist()

    def save(self) -> None:
        """Each training member's slice to its own checkpoints/last.ckpt; never non-finite
        weights (that member has diverged: it fails instead)."""
        for k, ok in enumerate(self.weights_finite()):
            if not ok and self.members[k].error is None and not self.members[k].stopped:
                self.fail(k, Diverged(self.step, ["weights"]))
        for k, state in self.member_states().items():
            try:
                checkpoint.save(self.fabric, self.members[k].run_dir.last_checkpoint, state)
            except Exception as exc:  # noqa: BLE001 - that member fails, the others go on
                self.fail(k, exc)
