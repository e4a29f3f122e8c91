"""Lightning callbacks of a run: evaluation at log-spaced steps, checkpoints, progress bar."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import pandas as pd
import torch

from rhmscale.config import RunConfig
from rhmscale.pipeline.data import Datasets
from rhmscale.pipeline.evaluate import (
    TrainingSetIndex,
    eval_steps,
    format_sequence,
    generation_metrics,
)
from rhmscale.tracking.store import RunDir, atomic_write

if TYPE_CHECKING:
    from rhmscale.pipeline.train import DiffusionLM


class Evaluator(L.Callback):
    """At log-spaced steps: generate, parse, compute metrics, log them and save the history."""

    def __init__(self, config: RunConfig, data: Datasets, run_dir: RunDir, samples_table: Any):
        self.config = config
        self.data = data
        self.run_dir = run_dir
        self.steps = set(eval_steps(config.train.max_steps, config.eval.n_evals))
        self.train_index = TrainingSetIndex(data.grammar, data.train)
        self.samples_table = samples_table  # callable(step, rows) or None

    def on_train_batch_end(self, trainer: L.Trainer, module: DiffusionLM, *args: Any) -> None:
        if trainer.global_step in self.steps and not any(
            row["step"] == trainer.global_step for row in module.history
        ):
            self.evaluate(trainer, module)

    def evaluate(self, trainer: L.Trainer, module: DiffusionLM) -> dict[str, Any]:
        step = trainer.global_step
        cfg = self.config
        device = module.device
        # Eval randomness depends only on (seed, step): identical after a resume.
        gen = torch.Generator(device=device)
        gen.manual_seed(hash_seed(cfg.seed, step))
        with trainer.precision_plugin.forward_context(), torch.no_grad():
            samples = module.diffusion.sample(
                module.denoiser,
                cfg.eval.n_samples,
                cfg.grammar.seq_len,
                cfg.diffusion.sampling_steps or None,
                device,
                generator=gen,
                batch_size=cfg.eval.batch_size,
            )
            val_loss = self.val_loss(module, gen)
        samples_np = samples.cpu().numpy()
        metrics = generation_metrics(self.data.grammar, samples_np, self.train_index)
        row: dict[str, Any] = {
            "step": step,
            "samples_seen": step * cfg.train.batch_size,
            "epoch": step * cfg.train.batch_size / cfg.data.P,
            "wall_s": module.wall_s(),
            "train/loss": module.pop_mean_train_loss(),
            "val/loss": val_loss,
            **metrics,
        }
        module.history.append(row)
        write_history(self.run_dir, module.history)
        if trainer.logger is not None:
            trainer.logger.log_metrics({k: v for k, v in row.items() if k != "step"}, step=step)
        if self.samples_table is not None:
            self.samples_table(
                step, sample_rows(self.data.grammar, samples_np, self.train_index, cfg)
            )
        return row

    def val_loss(self, module: DiffusionLM, gen: torch.Generator) -> float:
        test = torch.as_tensor(self.data.test, device=module.device)
        total, batch = 0.0, self.config.eval.batch_size
        for start in range(0, len(test), batch):
            chunk = test[start : start + batch]
            elbo = module.diffusion.elbo_per_token(module.denoiser, chunk, generator=gen)
            total += float(elbo) * len(chunk)
        return total / len(test)


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
