"""AdamW over a pack's stacked parameters (leading dimension K, member k's slice at [k]).

AdamW is elementwise, so one optimiser over the stacked tensors updates each member as if alone.
When the members share their recipe (train.lr, weight_decay, warmup_steps, lr_schedule) that is
torch's AdamW: on a GPU fused and capturable, graphed or not (so both compute the same), its
learning rate a device tensor refilled before each step (a Python float would be baked into a
CUDA graph). When they differ, StackedAdamW does the same update with a (K,) learning rate and
weight decay broadcast along K. Both keep exp_avg, exp_avg_sq and step per parameter: a
member's checkpoint slice is the same either way, so a run moves freely between packs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from rhmscale.config import TrainConfig

BETAS, EPS = (0.9, 0.999), 1e-8
# What sets a member's learning rate at a step, and its weight decay.
RECIPE = ("lr", "weight_decay", "warmup_steps", "lr_schedule")


def recipes_of(trains: list[TrainConfig]) -> list[TrainConfig]:
    """The pack's one recipe when its members share it, else each member's."""
    shared = len({tuple(getattr(t, key) for key in RECIPE) for t in trains}) == 1
    return trains[:1] if shared else trains


def make_optimizer(params: list[torch.Tensor], recipes: list[TrainConfig]) -> torch.optim.Optimizer:
    """torch's AdamW for one recipe (recipes_of), StackedAdamW for one per member."""
    device = params[0].device
    if len(recipes) > 1:
        lr = torch.tensor([t.lr for t in recipes], device=device)
        weight_decay = torch.tensor([t.weight_decay for t in recipes], device=device)
        return StackedAdamW(params, lr, weight_decay)
    lr, weight_decay = recipes[0].lr, recipes[0].weight_decay
    if not params[0].is_cuda:
        return torch.optim.AdamW(params, lr=lr, betas=BETAS, eps=EPS, weight_decay=weight_decay)
    return torch.optim.AdamW(
        params,
        lr=torch.tensor(lr, device=device),
        betas=BETAS,
        eps=EPS,
        weight_decay=weight_decay,
        fused=True,
        capturable=True,
    )


def set_lr(optimizer: torch.optim.Optimizer, lrs: list[float]) -> None:
    """Before each step: the learning rate of each recipe (one, or one per member)."""
    for group in optimizer.param_groups:
        lr = group["lr"]
        if not isinstance(lr, torch.Tensor):
            group["lr"] = lrs[0]
        elif lr.dim():
            # Non-blocking: a blocking copy from the host would wait for the device every step.
            lr.copy_(torch.tensor(lrs), non_blocking=True)
        else:
            lr.fill_(lrs[0])


def stacked_adamw_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    steps: list[torch.Tensor],
    lr: torch.Tensor,
    weight_decay: torch.Tensor,
) -> None:
    """torch.optim.AdamW's update (decoupled weight decay, bias correction), in place, with
    lr and weight_decay (K,): member k's slice of every tensor takes its own. Everything is
    read from tensors, so a CUDA graph replays it with the values of the step."""
    beta1, beta2 = BETAS
    for p, g, exp_avg, exp_avg_sq, step in zip(
        params, grads, exp_avgs, exp_avg_sqs, steps, strict=True
    ):
        shape = (-1, *[1] * (p.dim() - 1))
        lr_k, wd_k = lr.view(shape), weight_decay.view(shape)
        step += 1
        p.mul_(1 - lr_k * wd_k)
        exp_avg.lerp_(g, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        # Bias corrections in float64 (as torch computes them): 1 - beta2**step in float32
        # is 1e-5 off, relatively, for all the early steps.
        step_size = lr_k / (1 - beta1 ** step.double()).float()
        denom = (exp_avg_sq.sqrt() / (1 - beta2 ** step.double()).sqrt().float()).add_(EPS)
        p.sub_(exp_avg / denom * step_size)


class StackedAdamW(torch.optim.Optimizer):
    """AdamW with one learning rate and weight decay per member: (K,) device tensors in its
    param group, the learning rate refilled in place before each step (set_lr)."""

    def __init__(
        self,
        params: list[torch.Tensor],
        lr: torch.Tensor,
        weight_decay: torch.Tensor,
    ) -> None:
        # capturable: load_state_dict then puts `step` on the parameters' device, where the
        # graph reads it (torch's own convention for that key).
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "capturable": True})
        self.update: Callable[..., None] = stacked_adamw_

    def compile(self, mode: str) -> None:
        """Its update compiled (the training step does it with its own functions)."""
        self.update = torch.compile(stacked_adamw_, mode=mode, dynamic=False)

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            states = [self.state[p] for p in params]
            for p, state in zip(params, states, strict=True):
                if not state:
                    state["step"] = torch.zeros((), device=p.device)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
            self.update(
                params,
                [p.grad for p in params],
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                [s["step"] for s in states],
                group["lr"],
                group["weight_decay"],
            )
