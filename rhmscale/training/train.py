"""Training: a LightningModule around a denoiser and the masked diffusion process, plus callbacks.

The training set is a few thousand short integer sequences, so it lives on the device and each
step draws its minibatch with a seeded generator; no DataLoader workers, no host-device copies.
Both generators (minibatches, diffusion noise) are saved in checkpoints so a resumed run
continues the exact random stream of an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.environments import SLURMEnvironment
from torch.utils.data import DataLoader, IterableDataset

from rhmscale.config import RunConfig
from rhmscale.models import MaskedDiffusion, build_denoiser
from rhmscale.rhm.data import Datasets
from rhmscale.store.folders import RunDir
from rhmscale.training.callbacks import Evaluator, PeriodicCheckpoint, StepProgress
from rhmscale.training.pack_checkpoint import refuse_pack_checkpoint


def resolve_device(config: RunConfig) -> str:
    if config.train.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return config.train.device


def resolve_precision(config: RunConfig, device: str) -> str:
    precision = config.train.precision
    if precision == "auto":
        precision = "bf16" if device == "cuda" else "32"
    return "bf16-mixed" if precision == "bf16" else "32-true"


def compile_mode(setting: bool | str, device: torch.device) -> str | None:
    """The torch.compile mode a training step uses, or None for eager.

    setting: False/"off" (eager), True (torch's default mode), a mode name, or "auto": compile
    on a GPU, where the start-up pays for itself, and stay eager on a CPU.
    """
    if setting == "auto":
        setting = device.type == "cuda"
    if setting is False or setting == "off":
        return None
    return "default" if setting is True else setting


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Linear warmup, then constant or cosine decay to zero at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


class _Forever(IterableDataset):
    """Lightning needs a loader; batches are drawn on the device inside training_step."""

    def __iter__(self) -> Iterator[int]:
        while True:
            yield 0  # not None: Lightning skips the step for a None batch


def step_loader() -> DataLoader:
    return DataLoader(_Forever(), batch_size=None, collate_fn=lambda item: item)


class DiffusionLM(L.LightningModule):
    """compile: torch.compile the forward and loss (see compile_mode). The random draws stay
    outside, so a compiled run draws what an eager one does.
    """

    def __init__(self, config: RunConfig, train_data: np.ndarray, compile: bool | str = False):
        super().__init__()
        self.config = config
        self.compile_setting = compile  # not self.compile: that is nn.Module.compile()
        self._forward_loss = self.forward_loss
        self.denoiser = build_denoiser(config.model, config.grammar)
        self.diffusion = MaskedDiffusion(
            config.grammar.v, config.diffusion.schedule, config.diffusion.antithetic
        )
        self._train_cpu = torch.as_tensor(train_data, dtype=torch.long)
        self.train_data: torch.Tensor | None = None
        self.batch_gen: torch.Generator | None = None
        self.noise_gen: torch.Generator | None = None
        self._restored_generators: dict[str, torch.Tensor] | None = None
        # Per-eval records; saved in checkpoints so a resumed run keeps its earlier history.
        self.history: list[dict[str, Any]] = []
        self.wall_offset = 0.0
        self._loss_sum: torch.Tensor | None = None
        self._loss_count = 0
        self._restored_loss: tuple[float, int] = (0.0, 0)

    # --- data and randomness -------------------------------------------------------------
    def on_fit_start(self) -> None:
        self.train_data = self._train_cpu.to(self.device)
        self.batch_gen = torch.Generator(device=self.device)
        self.noise_gen = torch.Generator(device=self.device)
        self.batch_gen.manual_seed(self.config.seed * 2 + 1)
        self.noise_gen.manual_seed(self.config.seed * 2 + 2)
        if self._restored_generators is not None:
            self.batch_gen.set_state(self._restored_generators["batch"])
            self.noise_gen.set_state(self._restored_generators["noise"])
        loss_sum, self._loss_count = self._restored_loss
        self._loss_sum = torch.tensor(loss_sum, device=self.device)
        mode = compile_mode(self.compile_setting, self.device)
        if mode is not None:
            self._forward_loss = torch.compile(self.forward_loss, mode=mode)

    def forward_loss(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = self.denoiser(x_t, t)
        return self.diffusion.loss_from_logits(logits, x0, x_t, t).mean()

    def training_step(self, batch: int, batch_idx: int) -> torch.Tensor:
        assert self.train_data is not None
        idx = torch.randint(
            len(self.train_data),
            (self.config.train.batch_size,),
            device=self.device,
            generator=self.batch_gen,
        )
        x0 = self.train_data[idx]
        # Drawn as MaskedDiffusion.loss draws them: times, then masks, from the noise stream.
        t = self.diffusion.sample_times(len(x0), self.device, self.noise_gen)
        x_t = self.diffusion.corrupt(x0, t, self.noise_gen)
        loss = self._forward_loss(x0, x_t, t)
        self._loss_sum = self._loss_sum + loss.detach()
        self._loss_count += 1
        if self.logger is not None and self.global_step % 50 == 0:
            # Not self.log: Lightning would add its epoch counter as "epoch", the name of our
            # eval metric (samples seen / P), and mix its rows into the eval rows on W&B.
            self.logger.log_metrics(
                {"train/loss_step": loss.detach().item()}, step=self.global_step
            )
        return loss

    def pop_mean_train_loss(self) -> float:
        """Mean training loss since the last call (one device sync, at eval time only)."""
        if not self._loss_count:
            return float("nan")
        mean = float(self._loss_sum.item()) / self._loss_count
        self._loss_sum = torch.zeros((), device=self.device)
        self._loss_count = 0
        return mean

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Clipped here rather than through the Trainer: Lightning refuses its own clipping with
        # a fused optimizer under bf16 autocast, although bf16 needs no gradient scaling.
        if self.config.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.denoiser.parameters(), self.config.train.grad_clip)

    def configure_optimizers(self) -> dict[str, Any]:
        train = self.config.train
        optimizer = torch.optim.AdamW(
            self.denoiser.parameters(),
            lr=train.lr,
            weight_decay=train.weight_decay,
            fused=self.device.type == "cuda",
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: lr_factor(step, train.warmup_steps, train.max_steps, train.lr_schedule),
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def train_dataloader(self) -> DataLoader:
        return step_loader()

    # --- checkpoint extras ---------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rhmscale"] = {
            "batch_gen": self.batch_gen.get_state(),
            "noise_gen": self.noise_gen.get_state(),
            "history": self.history,
            "wall_s": self.wall_offset + time.perf_counter() - self._fit_started,
            "run_id": self.config.run_id(),
            "loss_since_eval": (float(self._loss_sum.item()), self._loss_count),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        extra = checkpoint["rhmscale"]
        self._restored_generators = {"batch": extra["batch_gen"], "noise": extra["noise_gen"]}
        self.history = list(extra["history"])
        self.wall_offset = float(extra["wall_s"])
        self._restored_loss = extra["loss_since_eval"]

    def on_train_start(self) -> None:
        self._fit_started = time.perf_counter()

    def wall_s(self) -> float:
        return self.wall_offset + time.perf_counter() - self._fit_started


def quiet_lightning() -> None:
    """Silence Lightning's start-up chatter that says nothing about this run."""
    import logging
    import warnings

    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.pytorch.accelerators.cuda",
        "lightning.pytorch.trainer.connectors.checkpoint_connector",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*`srun` command is available.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*IterableDataset.*has `__len__`.*")
    warnings.filterwarnings("ignore", message=".*that was saved mid-epoch.*")
    warnings.filterwarnings("ignore", message=".*not resumable.*")
    warnings.filterwarnings("ignore", message=".*infinite.*")


@dataclass
class TrainOutcome:
    history: list[dict[str, Any]]
    completed: bool  # False when stopped early (preemption); the checkpoint holds the state
    device: str
    precision: str


def train(
    config: RunConfig,
    data: Datasets,
    run_dir: RunDir,
    *,
    logger: Any = None,
    samples_table: Any = None,
    progress: bool = False,
    stop_at_step: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    callbacks: list[L.Callback] | None = None,
    compile: bool | str = False,
) -> TrainOutcome:
    """Train (or resume from run_dir's last checkpoint) and evaluate at log-spaced steps."""
    quiet_lightning()
    device = resolve_device(config)
    precision = resolve_precision(config, device)
    L.seed_everything(config.seed, workers=False, verbose=False)
    module = DiffusionLM(config, data.train, compile=compile)
    evaluator = Evaluator(config, data, run_dir, samples_table)
    checkpoint = PeriodicCheckpoint(
        run_dir, config.train.checkpoint_every, stop_at_step, should_stop
    )
    plugins = []
    if SLURMEnvironment.detect():
        # submitit requeues the task; Lightning must not requeue it a second time.
        plugins.append(SLURMEnvironment(auto_requeue=False))
    trainer = L.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        precision=precision,
        max_steps=config.train.max_steps,
        logger=logger if logger is not None else False,
        callbacks=[
            *(callbacks or []),
            evaluator,
            checkpoint,
            *([StepProgress()] if progress else []),
        ],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=50,
        default_root_dir=run_dir.path,
        plugins=plugins,
    )
    resume_from = run_dir.last_checkpoint if run_dir.last_checkpoint.exists() else None
    refuse_pack_checkpoint(run_dir.last_checkpoint)
    trainer.fit(module, ckpt_path=resume_from)
    completed = not checkpoint.stopped_early and trainer.global_step >= config.train.max_steps
    if completed and not any(row["step"] == trainer.global_step for row in module.history):
        evaluator.evaluate(trainer, module)  # the final evaluation, if the schedule missed it
    return TrainOutcome(module.history, completed, device, precision)
