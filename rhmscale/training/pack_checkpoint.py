"""A pack member's checkpoint: its own slice of the pack, in its own checkpoints/last.ckpt.

Each member's file holds everything its run needs to continue (weights, AdamW moments, both
generators, history, wall time, training loss since the last evaluation), so the run directory
stays self-contained: sweep status sees "interrupted", and a resubmission may pack the run with
any other runs at the same step. A pack also resumes a lone run's Lightning checkpoint (same
contents, Lightning's layout); the reverse is refused with a message (Lightning needs its loop
state, which a pack does not keep).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rhmscale.errors import UserError

FORMAT = "rhmscale-pack-member/1"


def is_pack_checkpoint(path: Path) -> bool:
    checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    return checkpoint.get("format") == FORMAT


def refuse_pack_checkpoint(path: Path) -> None:
    """For a lone run: a pack member's checkpoint can only be resumed by a pack."""
    if path.exists() and is_pack_checkpoint(path):
        raise UserError(
            f"{path} was written by packed training; resume this run in a pack "
            "(executor.pack: true), or delete its checkpoints/ folder to restart it alone"
        )


def read_member_checkpoint(path: Path) -> dict[str, Any]:
    """A member's state from its pack checkpoint or from a lone run's Lightning checkpoint.

    Keys: step, params, exp_avg, exp_avg_sq (name -> tensor) and rhmscale (the extras
    DiffusionLM.on_save_checkpoint writes: generators, history, wall_s, loss_since_eval).
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if checkpoint.get("format") == FORMAT:
        return checkpoint
    # Lightning: parameters are "denoiser.<name>"; AdamW's state is keyed by parameter
    # index, in denoiser.parameters() order, which is the state_dict's (no buffers).
    params = {
        key.removeprefix("denoiser."): value for key, value in checkpoint["state_dict"].items()
    }
    adam = checkpoint["optimizer_states"][0]["state"]
    if len(adam) != len(params):
        raise ValueError(f"{path}: optimiser state does not match the model's parameters")
    return {
        "format": FORMAT,
        "step": int(checkpoint["global_step"]),
        "params": params,
        "exp_avg": {name: adam[i]["exp_avg"] for i, name in enumerate(params)},
        "exp_avg_sq": {name: adam[i]["exp_avg_sq"] for i, name in enumerate(params)},
        "rhmscale": checkpoint["rhmscale"],
    }
