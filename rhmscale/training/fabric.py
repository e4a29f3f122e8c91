"""Lightning Fabric for a pack: one device, its precision, quiet start-up; and the progress bar.

Fabric owns the device, the precision (bf16 autocast on GPUs), checkpoint IO and the SLURM
environment; submitit requeues on preemption, so Lightning's own SLURM auto-requeue is off.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from rhmscale.config import RunConfig
from rhmscale.errors import UserError


def check_device(config: RunConfig) -> None:
    """train.device=cuda where no GPU is visible is the user's to change, said before a run
    folder is made (`rhmscale run`) or when a task starts (a sweep's node)."""
    if config.train.device == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device=cuda but no GPU is visible here; use train.device=auto")


def make_fabric(config: RunConfig) -> Any:
    """Fabric on one device: train.device (auto: a GPU if there is one), train.precision (auto:
    bf16 autocast on a GPU, fp32 on a CPU)."""
    import lightning as L
    from lightning.fabric.plugins.environments import SLURMEnvironment

    quiet_lightning()
    train = config.train
    check_device(config)
    gpu = train.device == "cuda" or (train.device == "auto" and torch.cuda.is_available())
    precision = train.precision if train.precision != "auto" else ("bf16" if gpu else "32")
    plugins = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else None
    return L.Fabric(
        accelerator="cuda" if gpu else "cpu",
        devices=1,
        precision="bf16-mixed" if precision == "bf16" else "32-true",
        plugins=plugins,
    )


def device_note(device: torch.device) -> str:
    """One line naming the device a task trains on and the GPUs it was given (SLURM's or the
    local executor's CUDA_VISIBLE_DEVICES), for its runs' logs."""
    env = os.environ
    given = [f"CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', 'unset')}"]
    given += [f"{key}={env[key]}" for key in ("SLURM_JOB_ID", "SLURM_ARRAY_TASK_ID") if key in env]
    name = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    return f"device {device}{name}; {' '.join(given)}"


def quiet_lightning() -> None:
    """Silence Lightning's start-up chatter that says nothing about a run."""
    import logging
    import warnings

    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*`srun` command is available.*")


def progress_bar(enabled: bool, total: int, initial: int) -> Any:
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
