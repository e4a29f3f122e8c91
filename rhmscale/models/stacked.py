"""K denoisers of one shape as one stack of parameters, called on all members at once.

Each parameter is one leaf tensor of shape (K, *shape): an optimiser updates all members with
one (fused) kernel, and the forward is torch.func.vmap of functional_call over the member
dimension, so every linear layer becomes one batched matmul instead of K small ones. Members
never mix: member k's logits, loss and gradients depend on member k's slice only.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from rhmscale.models import build_denoiser

if TYPE_CHECKING:
    from rhmscale.config import GrammarConfig, ModelConfig

Tensors = dict[str, torch.Tensor]


class StackedDenoiser:
    """forward(x_t (K, B, n) long, t (K, B) float) -> logits (K, B, n, vocab_size).

    Also callable with explicit `params` (what torch.compile of a whole training step wants).
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        if not members:
            raise ValueError("a stack needs at least one member")
        params, buffers = stack_module_state(list(members))
        self.params: Tensors = params
        self.buffers: Tensors = buffers
        self.k = len(members)
        # A shape-only copy: functional_call swaps in each member's slice.
        self._base = copy.deepcopy(members[0]).to("meta")
        self._vmapped = vmap(self._one, in_dims=(0, 0, 0, 0))

    def _one(self, params: Tensors, buffers: Tensors, x: torch.Tensor, t: torch.Tensor):
        return functional_call(self._base, (params, buffers), (x, t))

    def __call__(
        self, x_t: torch.Tensor, t: torch.Tensor, params: Tensors | None = None
    ) -> torch.Tensor:
        params = self.params if params is None else params
        if self.k == 1:
            # A pack of one (a lone run) calls its member directly: the same arithmetic without
            # vmap's per-op overhead (half a tiny CPU run's time), and fused attention kernels.
            one = {name: p[0] for name, p in params.items()}
            buffers = {name: b[0] for name, b in self.buffers.items()}
            return self._one(one, buffers, x_t[0], t[0]).unsqueeze(0)
        return self._vmapped(params, self.buffers, x_t, t)

    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values())

    def to(self, device: torch.device | str) -> StackedDenoiser:
        """Move in place; parameters stay leaves that require grad."""
        self.params = {
            name: p.detach().to(device).requires_grad_(p.requires_grad)
            for name, p in self.params.items()
        }
        self.buffers = {name: b.to(device) for name, b in self.buffers.items()}
        return self

    def load_member(self, k: int, params: Tensors) -> None:
        """Overwrite member k's parameters (a new run's, or a resumed run's checkpoint)."""
        with torch.no_grad():
            for name, p in self.params.items():
                p[k].copy_(params[name])

    def with_params(self, params: Tensors, members: Sequence[int]) -> StackedDenoiser:
        """The same denoiser over other stacked parameters, one per entry of `members` (the
        slots they came from: their buffers): an evaluation of snapshots taken earlier."""
        view = copy.copy(self)
        view.params = params
        index = torch.tensor(list(members), device=next(iter(params.values())).device)
        view.buffers = {name: b.index_select(0, index) for name, b in self.buffers.items()}
        view.k = len(members)
        return view


def stack_denoisers(
    model: ModelConfig, grammar: GrammarConfig, seeds: Sequence[int]
) -> StackedDenoiser:
    """One member per seed, each initialised bit for bit as its lone run initialises it.

    A lone run seeds the global torch RNG with its seed (Lightning's seed_everything) and
    then builds its denoiser on the CPU; the same is done here for each member in turn, inside
    fork_rng so the caller's RNG state is left as it was.
    """
    members = []
    with torch.random.fork_rng(devices=[]):
        for seed in seeds:
            torch.manual_seed(seed)
            members.append(build_denoiser(model, grammar))
    return StackedDenoiser(members)


def initial_params(model: ModelConfig, grammar: GrammarConfig, seed: int) -> Tensors:
    """One run's initial weights, bit for bit those of its lone run (a slot's new run)."""
    return {name: p[0] for name, p in stack_denoisers(model, grammar, [seed]).params.items()}
