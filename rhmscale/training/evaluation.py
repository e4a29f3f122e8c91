"""Evaluation of the members of a pack: generate, score held-out data, parse, record.

All members are sampled and scored at once (one stacked denoiser, one generator each); then each
member's row goes to its history, its metrics.parquet and its W&B run. Evaluation randomness
depends only on (seed, step), so a resumed run evaluates exactly as an uninterrupted one, and
an evaluation cut short by a stop request is redone from the start when the run resumes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from rhmscale.config import RunConfig
from rhmscale.models import MaskedDiffusion
from rhmscale.rhm.data import Datasets
from rhmscale.rhm.metrics import TrainingSetIndex, format_sequence, generation_metrics
from rhmscale.store.folders import RunDir
from rhmscale.store.wandb_mirror import MirrorRun


def hash_seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def eval_generators(
    configs: list[RunConfig], steps: int | Sequence[int], device: torch.device
) -> list:
    """One generator per member, seeded by (seed, step) alone (steps: the members' own)."""
    steps = [steps] * len(configs) if isinstance(steps, int) else steps
    return [
        torch.Generator(device).manual_seed(hash_seed(c.seed, step))
        for c, step in zip(configs, steps, strict=True)
    ]


def val_generators(configs: list[RunConfig], device: torch.device) -> list:
    """One generator per member, seeded by its seed alone: val/loss draws the same (t, mask) at
    every evaluation (common random numbers). With fresh draws each time, a lucky draw looked
    like the best model: on GPU sweeps val/loss wandered +-0.05 between evaluations while the
    training loss fell steadily, and early stopping ended runs still learning their top level."""
    return [torch.Generator(device).manual_seed(hash_seed(c.seed, 0, 1)) for c in configs]


class Diverged(Exception):
    """A run's loss or weights went non-finite: it fails with failed.json (reason diverged)."""

    def __init__(self, step: int, what: list[str]) -> None:
        super().__init__(
            f"{' and '.join(what)} not finite at step {step}: the run diverged (a lower train.lr, "
            "a longer train.warmup_steps or train.grad_clip may help)"
        )
        self.record = {"reason": "diverged", "step": step}


class EvaluationStopped(Exception):
    """A stop request arrived during an evaluation: it is dropped, to be redone on resume."""


@torch.no_grad()
def sample_and_score(
    diffusion: MaskedDiffusion,
    denoiser: Any,
    config: RunConfig,
    test: torch.Tensor,
    generators: list[torch.Generator],
    val_gens: list[torch.Generator],
    should_stop: Callable[[], bool] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generated samples (K, n_samples, n) and held-out ELBO per token (K,) of every member.

    test: (K, n_test, n); generators: eval_generators (sampling); val_gens: val_generators
    (val/loss). The loss is summed in float64 chunk by chunk, as a Python float would.
    should_stop() is asked before every denoiser call (the training loop asks it between steps,
    and one batch of an evaluation may take minutes): EvaluationStopped when it is true.
    """
    cfg, batch = config.eval, config.eval.batch_size
    check = stop_check(should_stop)
    chunks = []
    for start in range(0, cfg.n_samples, batch):  # batch by batch: the same stream as at once
        chunks.append(
            diffusion.sample(
                denoiser,
                min(batch, cfg.n_samples - start),
                config.grammar.seq_len,
                config.diffusion.sampling_steps or None,
                test.device,
                generator=generators,
                batch_size=batch,
                check=check,
            )
        )
    n_test = test.shape[-2]
    total = torch.zeros((), dtype=torch.float64, device=test.device)
    for start in range(0, n_test, batch):
        chunk = test[..., start : start + batch, :]
        elbo = diffusion.elbo_per_token(denoiser, chunk, val_gens, cfg.val_draws, check)
        total = total + elbo.double() * chunk.shape[-2]
    return torch.cat(chunks, dim=-2), total / n_test


def stop_check(should_stop: Callable[[], bool] | None) -> Callable[[], None] | None:
    """should_stop as the check that the sampler and the parser call: EvaluationStopped."""
    if should_stop is None:
        return None

    def check() -> None:
        if should_stop():
            raise EvaluationStopped

    return check


def progress_postfix(rows: list[dict[str, Any]], levels: int) -> dict[str, str]:
    """The progress bar's latest metrics from the members' last rows: a run's, or the mean."""
    if not rows:
        return {}
    top = f"gen/novel_acc_l{levels}"
    mean = {key: np.mean([r[key] for r in rows]) for key in ("val/loss", top)}
    return {"val_loss": f"{mean['val/loss']:.3f}", "acc_top": f"{mean[top]:.2f}"}


class EvalRecorder:
    """One run's record of an evaluation: metrics row, metrics.parquet, W&B metrics and table."""

    def __init__(
        self, config: RunConfig, data: Datasets, run_dir: RunDir, mirror: MirrorRun | None
    ):
        self.config = config
        self.data = data
        self.run_dir = run_dir
        self.mirror = mirror
        self.train_index = TrainingSetIndex(data.grammar, data.train)

    def measure(
        self, samples: np.ndarray, check: Callable[[], None] | None = None
    ) -> dict[str, float]:
        """The generation metrics of the samples (check: Grammar.parse's)."""
        grammar, min_novel = self.data.grammar, self.config.eval.min_novel
        return generation_metrics(grammar, samples, self.train_index, min_novel, check)

    def record(
        self,
        history: list[dict[str, Any]],
        step: int,
        samples: np.ndarray,
        metrics: dict[str, float],
        *,
        val_loss: float,
        train_loss: float,
        wall_s: float,
        table: bool = True,
    ) -> dict[str, Any]:
        """Append the evaluation's row (metrics: measure's) to the history, metrics.parquet and
        W&B (with a table of samples when `table`)."""
        cfg = self.config
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
        self.run_dir.write_metrics(history)
        if self.mirror is not None:
            self.mirror.log({k: v for k, v in row.items() if k != "step"}, step)
            if table and cfg.tracking.n_table_samples:
                self.mirror.log_samples(step, self.sample_rows(samples))
        return row

    def sample_rows(self, samples: np.ndarray) -> list[list[Any]]:
        grammar = self.data.grammar
        shown = samples[: self.config.tracking.n_table_samples]
        parse = grammar.parse(shown)
        memorized = np.zeros(len(shown), dtype=bool)
        memorized[parse.valid] = self.train_index.contains(shown[parse.valid])
        return [
            [format_sequence(seq, grammar.s), int(d), bool(ok), bool(mem)]
            for seq, d, ok, mem in zip(shown, parse.depth, parse.valid, memorized, strict=True)
        ]
