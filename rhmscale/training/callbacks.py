"""Lightning callbacks of a run (evaluation at log-spaced steps, checkpoints, progress bar), and
the evaluation and its record that packed training (pipeline.packed) shares with them."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import pandas as pd
import torch

from rhmscale.config import RunConfig
from rhmscale.models import MaskedDiffusion
from rhmscale.rhm.data import Datasets
from rhmscale.rhm.metrics import (
    TrainingSetIndex,
    eval_steps,
    format_sequence,
    generation_metrics,
)
from rhmscale.store.atomic import atomic_write
from rhmscale.store.folders import RunDir

if TYPE_CHECKING:
    from rhmscale.training.train import DiffusionLM


class Evaluator(L.Callback):
    """At log-spaced steps: generate, parse, compute metrics, log them and save the history."""

    def __init__(self, config: RunConfig, data: Datasets, run_dir: RunDir, samples_table: Any):
        self.config = config
        self.data = data
        self.steps = set(eval_steps(config.train.max_steps, config.eval.n_evals))
        self.recorder = EvalRecorder(config, data, run_dir, samples_table)

    def on_train_batch_end(self, trainer: L.Trainer, module: DiffusionLM, *args: Any) -> None:
        if trainer.global_step in self.steps and not any(
            row["step"] == trainer.global_step for row in module.history
        ):
            self.evaluate(trainer, module)

    def evaluate(self, trainer: L.Trainer, module: DiffusionLM) -> dict[str, Any]:
        step = trainer.global_step
        device = module.device
        # Eval randomness depends only on (seed, step): identical after a resume.
        gen = torch.Generator(device=device)
        gen.manual_seed(hash_seed(self.config.seed, step))
        test = torch.as_tensor(self.data.test, device=device)
        with trainer.precision_plugin.forward_context():
            samples, val_loss = sample_and_score(
                module.diffusion, module.denoiser, self.config, test, gen
            )
        return self.recorder.record(
            module.history,
            step,
            samples.cpu().numpy(),
            val_loss=float(val_loss),
            train_loss=module.pop_mean_train_loss(),
            wall_s=module.wall_s(),
            logger=trainer.logger,
        )


@torch.no_grad()
def sample_and_score(
    diffusion: MaskedDiffusion,
    denoiser: Any,
    config: RunConfig,
    test: torch.Tensor,
    generator: torch.Generator | list[torch.Generator],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generated samples and held-out ELBO per token of one evaluation, with one stream.

    For a pack (a stacked denoiser, test (K, n_test, n) and K generators) both carry a leading
    member dimension. The loss is summed in float64 chunk by chunk, as a Python float would be.
    """
    cfg = config.eval
    samples = diffusion.sample(
        denoiser,
        cfg.n_samples,
        config.grammar.seq_len,
        config.diffusion.sampling_steps or None,
        test.device,
        generator=generator,
        batch_size=cfg.batch_size,
    )
    n_test, batch = test.shape[-2], cfg.batch_size
    total = torch.zeros((), dtype=torch.float64, device=test.device)
    for start in range(0, n_test, batch):
        chunk = test[..., start : start + batch, :]
        elbo = diffusion.elbo_per_token(denoiser, chunk, generator=generator)
        total = total + elbo.double() * chunk.shape[-2]
    return samples, total / n_test


class EvalRecorder:
    """One run's record of an evaluation: metrics row, metrics.parquet, W&B metrics and table.

    Shared by lone runs (Evaluator) and each member of a pack, so their rows are the same.
    """

    def __init__(self, config: RunConfig, data: Datasets, run_dir: RunDir, samples_table: Any):
        self.config = config
        self.data = data
        self.run_dir = run_dir
        self.train_index = TrainingSetIndex(data.grammar, data.train)
        self.samples_table = samples_table  # callable(step, rows) or None

    def record(
        self,
        history: list[dict[str, Any]],
        step: int,
        samples: np.ndarray,
        *,
        val_loss: float,
        train_loss: float,
        wall_s: float,
        logger: Any,
    ) -> dict[str, Any]:
        cfg = self.config
        metrics = generation_metrics(self.data.grammar, samples, self.train_index)
        row: dict[str, Any] = {
            "step": step,
            "samples_seen": step * cfg.train.batch_size,
            "epoch": step * cfg.train.batch_size / cfg.data.P,
            "wall_s": wall_s,
            "train/loss": train_loss,
            "val/loss": val_loss,
            **metrics,
        }
        history.append(row)
        write_history(self.run_dir, history)
        if logger is not None:
            logger.log_metrics({k: v for k, v in row.items() if k != "step"}, step=step)
        if self.samples_table is not None:
            self.samples_table(step, sample_rows(self.data.grammar, samples, self.train_index, cfg))
        return row


def sample_rows(grammar, samples: np.ndarray, index: TrainingSetIndex, cfg: RunConfig) -> list:
    shown = samples[: cfg.tracking.n_table_samples]
    if not len(shown):
        return []
    parse = grammar.parse(shown)
    memorized = np.zeros(len(shown), dtype=bool)
    memorized[parse.valid] = index.contains(shown[parse.valid])
    return [
        [format_sequence(seq, grammar.s), int(d), bool(ok), bool(mem)]
        for seq, d, ok, mem in zip(shown, parse.depth, parse.valid, memorized, strict=True)
    ]


def hash_seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def write_history(run_dir: RunDir, history: list[dict[str, Any]]) -> None:
    frame = pd.DataFrame(history)
    atomic_write(run_dir.metrics, lambda handle: frame.to_parquet(handle, index=False))


class StepProgress(L.Callback):
    """One progress bar over optimiser steps (from the resumed step), with the latest metrics."""

    def on_train_start(self, trainer: L.Trainer, module: DiffusionLM) -> None:
        import sys

        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=trainer.max_steps,
            initial=trainer.global_step,
            unit="step",
            dynamic_ncols=True,
            mininterval=0.2 if sys.stderr.isatty() else 30,  # log files get a line every 30 s
        )

    def on_train_batch_end(self, trainer: L.Trainer, module: DiffusionLM, *args: Any) -> None:
        self.bar.update(trainer.global_step - self.bar.n)
        if module.history and module.history[-1]["step"] == trainer.global_step:
            row = module.history[-1]
            level = module.config.grammar.L
            self.bar.set_postfix(
                val_loss=f"{row['val/loss']:.3f}", acc_top=f"{row[f'gen/acc_l{level}']:.2f}"
            )

    def on_train_end(self, trainer: L.Trainer, module: DiffusionLM) -> None:
        self.bar.close()


class PeriodicCheckpoint(L.Callback):
    """checkpoints/last.ckpt every N steps (atomically); on request, checkpoint and stop.

    `should_stop()` is asked after every step: true (a preemption signal arrived) means save
    now and stop without finishing; `stop_at_step` does the same at a given step (tests).
    """

    def __init__(
        self,
        run_dir: RunDir,
        every: int,
        stop_at_step: int | None = None,
        should_stop: Callable[[], bool] | None = None,
    ):
        self.run_dir = run_dir
        self.every = every
        self.stop_at_step = stop_at_step
        self.should_stop = should_stop
        self.stopped_early = False

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        step = trainer.global_step
        saved = bool(step) and (step % self.every == 0 or step == trainer.max_steps)
        if saved:
            self.save(trainer)
        if step < trainer.max_steps and self._stop_requested(step):
            if not saved:
                self.save(trainer)
            self.stopped_early = True
            trainer.should_stop = True

    def _stop_requested(self, step: int) -> bool:
        if self.stop_at_step is not None and step >= self.stop_at_step:
            return True
        return self.should_stop is not None and self.should_stop()

    def save(self, trainer: L.Trainer) -> None:
        path = self.run_dir.last_checkpoint
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        trainer.save_checkpoint(tmp)
        os.replace(tmp, path)
