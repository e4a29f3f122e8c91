"""Packed training: K runs of one shape trained together on one device, each as if alone.

A plain torch loop rather than Lightning: a Trainer drives one model with one logger, one
checkpoint file and one evaluation, while a pack needs K of each (every member keeps its own
W&B run, checkpoint, evaluation and history). What Lightning would still add (device placement,
autocast, stepping the optimiser) is a line each here, and a bare loop keeps per-step hook
overhead out of the hot path and lets the forward and backward be torch.compile'd.

Why a member's trajectory equals its lone run's (tests/test_packed.py checks it to 1e-5):
- initial weights: stack_denoisers seeds each member exactly as a lone run does;
- minibatches and diffusion noise: per-member generators seeded seed*2+1 and seed*2+2 draw the
  same shapes in the same order as DiffusionLM.training_step (these draws are the only loop
  over members in a step);
- one AdamW over the stacked tensors is elementwise, hence per member; learning rate and weight
  decay are shared by a pack (packing.py); gradients are clipped by each member's own norm;
- evaluation at the same steps, with the eval generator seeded hash_seed(seed, step).
"""

from __future__ import annotations

import contextlib
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
from rhmscale.rhm.metrics import eval_steps
from rhmscale.store.atomic import atomic_write
from rhmscale.store.folders import RunDir
from rhmscale.store.wandb_mirror import wandb_folders
from rhmscale.training.callbacks import EvalRecorder, hash_seed, sample_and_score
from rhmscale.training.pack_checkpoint import FORMAT
from rhmscale.training.packing import check_packable
from rhmscale.training.train import compile_mode, lr_factor, resolve_device, resolve_precision


@dataclass
class Member:
    """One run of a pack."""

    config: RunConfig
    data: Datasets
    run_dir: RunDir
    logger: Any = None  # its W&B logger (wandb_mirror.make_logger), or None
    samples_table: Any = None  # wandb_mirror.samples_table_writer(logger)
    state: dict[str, Any] | None = None  # read_member_checkpoint(...) to resume from
    history: list[dict[str, Any]] = field(default_factory=list)
    error: BaseException | None = None  # its own evaluation or checkpoint failed: not recorded


def clip_per_member(grads: list[torch.Tensor], max_norm: torch.Tensor) -> None:
    """clip_grad_norm_ for each member's slice of stacked gradients; max_norm (K,), 0 = off."""
    k = max_norm.shape[0]
    norms = torch.stack([torch.linalg.vector_norm(g.reshape(k, -1), dim=1) for g in grads])
    total = torch.linalg.vector_norm(norms, dim=0)
    coef = torch.where(max_norm > 0, (max_norm / (total + 1e-6)).clamp(max=1.0), 1.0)
    for g in grads:
        g.mul_(coef.view(k, *[1] * (g.dim() - 1)))


class PackTrainer:
    """Trains the members of one pack from their common step to max_steps.

    All members start at the same step: fresh, or resumed from checkpoints of that step.
    compile: torch.compile the vmapped forward/loss and the clipping (see train.compile_mode:
    True, "off", "auto" or a torch.compile mode); the per-member random draws stay eager.
    on_step(step, losses (K,)) is called after every optimiser step (tests; a no-op default);
    on_member_error(k, exc) when member k's evaluation or checkpoint raised; it trains on with
    the others but is no longer recorded.
    """

    def __init__(
        self,
        members: list[Member],
        *,
        compile: bool | str = False,
        on_step: Callable[[int, torch.Tensor], None] | None = None,
        on_member_error: Callable[[int, BaseException], None] | None = None,
    ) -> None:
        check_packable([m.config for m in members])
        steps = {m.state["step"] if m.state else 0 for m in members}
        if len(steps) != 1:
            raise ValueError(f"members of one pack must resume from one step, got {steps}")
        self.members = members
        self.config = cfg = members[0].config
        self.step = steps.pop()
        self.on_step = on_step
        self.on_member_error = on_member_error
        self.device = torch.device(resolve_device(cfg))
        self.precision = resolve_precision(cfg, self.device.type)
        self.eval_at = set(eval_steps(cfg.train.max_steps, cfg.eval.n_evals))
        self.diffusion = MaskedDiffusion(
            cfg.grammar.v, cfg.diffusion.schedule, cfg.diffusion.antithetic
        )
        self.stack = stack_denoisers(cfg.model, cfg.grammar, [m.config.seed for m in members])
        self.stack.to(self.device)
        self.recorders = [
            EvalRecorder(m.config, m.data, m.run_dir, m.samples_table) for m in members
        ]
        self._place_data()
        self._make_generators()
        self.optimizer = torch.optim.AdamW(
            self.stack.parameters(),
            lr=cfg.train.lr,
            weight_decay=cfg.train.weight_decay,
            fused=self.device.type == "cuda",
        )
        clips = [m.config.train.grad_clip for m in members]
        self.max_norm = torch.tensor(clips, device=self.device) if any(clips) else None
        self.loss_sum = torch.zeros(len(members), device=self.device)
        self.loss_count = 0
        self.wall_offset = np.zeros(len(members))
        if self.step:
            self._restore()
        self._loss, self._clip = self._forward_loss, clip_per_member
        mode = compile_mode(compile, self.device)
        if mode is not None:
            self._loss = torch.compile(self._forward_loss, mode=mode)
            self._clip = torch.compile(clip_per_member, mode=mode)

    # --- set-up -----------------------------------------------------------------------------
    def _place_data(self) -> None:
        """All training sets in one device tensor; member k's rows start at offsets[k]."""
        train = [torch.as_tensor(m.data.train, dtype=torch.long) for m in self.members]
        self.sizes = [len(t) for t in train]
        starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.offsets = torch.as_tensor(starts, device=self.device).view(-1, 1)
        self.train_data = torch.cat(train).to(self.device)
        self.test_data = torch.stack(
            [torch.as_tensor(m.data.test, dtype=torch.long) for m in self.members]
        ).to(self.device)

    def _make_generators(self) -> None:
        self.batch_gens, self.noise_gens = [], []
        for m in self.members:
            seed = m.config.seed
            self.batch_gens.append(torch.Generator(self.device).manual_seed(seed * 2 + 1))
            self.noise_gens.append(torch.Generator(self.device).manual_seed(seed * 2 + 2))

    def _restore(self) -> None:
        states = [m.state for m in self.members]
        for k, state in enumerate(states):
            self.stack.load_member(k, state["params"])
            extra = state["rhmscale"]
            self.batch_gens[k].set_state(extra["batch_gen"])
            self.noise_gens[k].set_state(extra["noise_gen"])
            self.members[k].history = list(extra["history"])
            self.wall_offset[k] = float(extra["wall_s"])
            self.loss_sum[k] = extra["loss_since_eval"][0]
        self.loss_count = states[0]["rhmscale"]["loss_since_eval"][1]
        adam = self.optimizer.state_dict()
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
        self.optimizer.load_state_dict(adam)

    # --- training ---------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16-mixed":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _forward_loss(self, params, x0, x_t, t) -> torch.Tensor:
        logits = self.stack(x_t, t, params)
        return self.diffusion.loss_from_logits(logits, x0, x_t, t).mean(dim=-1)

    def train_step(self) -> torch.Tensor:
        """One optimiser step of every member; returns the members' losses (K,), detached."""
        train, device = self.config.train, self.device
        lr = train.lr * lr_factor(self.step, train.warmup_steps, train.max_steps, train.lr_schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        b = train.batch_size
        idx = torch.stack(
            [
                torch.randint(n, (b,), device=device, generator=g)
                for n, g in zip(self.sizes, self.batch_gens, strict=True)
            ]
        )
        x0 = self.train_data[idx + self.offsets]  # (K, B, n)
        t = self.diffusion.sample_times(b, device, self.noise_gens)
        x_t = self.diffusion.corrupt(x0, t, self.noise_gens)
        with self.autocast():
            losses = self._loss(self.stack.params, x0, x_t, t)
        losses.sum().backward()  # member k's gradient is that of its own loss only
        if self.max_norm is not None:
            self._clip([p.grad for p in self.stack.parameters()], self.max_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        losses = losses.detach().clone()  # CUDA graphs (reduce-overhead) reuse their outputs
        self.loss_sum += losses
        self.loss_count += 1
        self.step += 1
        return losses

    def fit(
        self,
        *,
        stop_at_step: int | None = None,
        should_stop: Callable[[], bool] | None = None,
        progress: bool = False,
    ) -> bool:
        """Train to max_steps (True), or checkpoint and return False when asked to stop."""
        train = self.config.train
        self._started = time.perf_counter()
        with _progress(progress, train.max_steps, self.step) as bar:
            while self.step < train.max_steps and not self._all_failed():
                losses = self.train_step()
                if self.on_step is not None:
                    self.on_step(self.step, losses)
                if self.step % 50 == 0:
                    self._log_train_loss(losses)
                if self.step in self.eval_at:
                    self.evaluate()
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
                    return False
        self.evaluate()  # the final evaluation, if the schedule missed it
        return True

    def _all_failed(self) -> bool:
        return all(m.error is not None for m in self.members)

    def _active(self) -> Iterator[tuple[int, Member]]:
        return ((k, m) for k, m in enumerate(self.members) if m.error is None)

    def _fail(self, k: int, exc: BaseException) -> None:
        self.members[k].error = exc
        if self.on_member_error is not None:
            self.on_member_error(k, exc)

    def _log_train_loss(self, losses: torch.Tensor) -> None:
        """train/loss_step to W&B every 50 steps, as a lone run logs it (one sync)."""
        if not any(m.logger is not None for m in self.members):
            return
        for k, value in enumerate(losses.tolist()):
            m = self.members[k]
            if m.logger is not None and m.error is None:
                with wandb_folders(m.run_dir):
                    m.logger.log_metrics({"train/loss_step": value}, step=self.step)

    # --- evaluation and checkpoints -------------------------------------------------------
    def wall_s(self) -> np.ndarray:
        return self.wall_offset + (time.perf_counter() - self._started)

    def pop_mean_train_losses(self) -> list[float]:
        if not self.loss_count:
            return [float("nan")] * len(self.members)
        means = [total / self.loss_count for total in self.loss_sum.tolist()]
        self.loss_sum.zero_()
        self.loss_count = 0
        return means

    def evaluate(self) -> None:
        """Evaluate all members at once; record the rows of those without one at this step."""
        step = self.step
        todo = [k for k, m in self._active() if not (m.history and m.history[-1]["step"] == step)]
        if not todo:
            return
        gens = [
            torch.Generator(self.device).manual_seed(hash_seed(m.config.seed, step))
            for m in self.members
        ]
        with self.autocast():
            samples, val_loss = sample_and_score(
                self.diffusion, self.stack, self.config, self.test_data, gens
            )
        samples, val_loss = samples.cpu().numpy(), val_loss.tolist()
        train_loss, wall = self.pop_mean_train_losses(), self.wall_s()
        for k in todo:
            m = self.members[k]
            try:
                with wandb_folders(m.run_dir) if m.logger else contextlib.nullcontext():
                    self.recorders[k].record(
                        m.history,
                        step,
                        samples[k],
                        val_loss=val_loss[k],
                        train_loss=train_loss[k],
                        wall_s=float(wall[k]),
                        logger=m.logger,
                    )
            except Exception as exc:  # noqa: BLE001 - that member fails, the others go on
                self._fail(k, exc)

    def save(self) -> None:
        """Each member's slice to its own checkpoints/last.ckpt (atomically)."""
        adam = [self.optimizer.state[p] for p in self.stack.parameters()]
        names = list(self.stack.params)
        host = {
            "params": [p.detach().cpu() for p in self.stack.parameters()],
            "exp_avg": [s["exp_avg"].cpu() for s in adam],
            "exp_avg_sq": [s["exp_avg_sq"].cpu() for s in adam],
        }
        sums, wall = self.loss_sum.tolist(), self.wall_s()
        for k, m in self._active():
            state = {
                "format": FORMAT,
                "run_id": m.config.run_id(),
                "step": self.step,
                **{
                    key: {n: t[k].clone() for n, t in zip(names, tensors, strict=True)}
                    for key, tensors in host.items()
                },
                "rhmscale": {
                    "batch_gen": self.batch_gens[k].get_state(),
                    "noise_gen": self.noise_gens[k].get_state(),
                    "history": m.history,
                    "wall_s": float(wall[k]),
                    "run_id": m.config.run_id(),
                    "loss_since_eval": (sums[k], self.loss_count),
                },
            }
            try:
                atomic_write(m.run_dir.last_checkpoint, lambda h, s=state: torch.save(s, h))
            except Exception as exc:  # noqa: BLE001 - that member fails, the others go on
                self._fail(k, exc)


def _progress(enabled: bool, total: int, initial: int) -> Any:
    """A tqdm bar over the pack's steps (disabled: updates are no-ops)."""
    import sys

    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="step",
        dynamic_ncols=True,
        disable=not enabled,
        mininterval=0.2 if sys.stderr.isatty() else 30,  # log files get a line every 30 s
    )
