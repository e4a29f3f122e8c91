"""Denoisers (plain nn.Module) and the masked diffusion process. No Lightning, W&B or submitit."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from rhmscale.models.diffusion import MaskedDiffusion, Schedule
from rhmscale.models.transformer import Transformer
from rhmscale.models.tree_unet import TreeUNet

if TYPE_CHECKING:
    from rhmscale.config import GrammarConfig, ModelConfig

__all__ = [
    "MaskedDiffusion",
    "Schedule",
    "Transformer",
    "TreeUNet",
    "build_denoiser",
    "count_parameters",
]


def build_denoiser(model: ModelConfig, grammar: GrammarConfig) -> nn.Module:
    """The denoiser a run's config asks for: vocabulary grammar.v, length grammar.s**grammar.L."""
    if model.arch == "transformer":
        return Transformer(
            vocab_size=grammar.v,
            seq_len=grammar.s**grammar.L,
            width=model.width,
            depth=model.depth,
            heads=model.heads,
            time_cond=model.time_cond,
        )
    return TreeUNet(  # model.arch == "tree_unet" (the config allows no other)
        vocab_size=grammar.v,
        s=grammar.s,
        L=grammar.L,
        width=model.width,
        time_cond=model.time_cond,
    )


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
