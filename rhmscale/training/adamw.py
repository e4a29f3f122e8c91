"""AdamW over a pack's stacked parameters (leading dimension K, member k's slice at [k]), each
member with its own step count, learning rate and weight decay.

AdamW is elementwise, so one optimiser over the stacked tensors updates each member as if alone,
provided each member's bias correction uses its own step: a slot's run may join the pack at
another run's step 7,000 and must start its Adam at step 1 (torch's AdamW keeps one step per
parameter tensor, shared by all K members, so it cannot). Everything is read from device
tensors refilled in place (learning rates before every step, weight decay and step counts when a
slot takes a run), so a CUDA graph captured once replays the update of whatever runs the slots
hold. tests/test_per_member_optim.py holds it to torch's AdamW member by member.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

BETAS, EPS = (0.9, 0.999), 1e-8


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
    lr, weight_decay and each parameter's step count (K,): member k's slice of every tensor
    takes its own."""
    beta1, beta2 = BETAS
    for p, g, exp_avg, exp_avg_sq, step in zip(
        params, grads, exp_avgs, exp_avg_sqs, steps, strict=True
    ):
        shape = (-1, *[1] * (p.dim() - 1))
        lr_k, wd_k = lr.view(shape), weight_decay.view(shape)
        step += 1
        # Bias corrections in float64 (as torch computes them): 1 - beta2**step in float32
        # is 1e-5 off, relatively, for all the early steps.
        correction1 = (1 - beta1 ** step.double()).float().view(shape)
        correction2 = (1 - beta2 ** step.double()).sqrt().float().view(shape)
        p.mul_(1 - lr_k * wd_k)
        exp_avg.lerp_(g, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        p.sub_(exp_avg / (exp_avg_sq.sqrt() / correction2).add_(EPS) * (lr_k / correction1))


class StackedAdamW(torch.optim.Optimizer):
    """AdamW with one learning rate, weight decay and step count per member: (K,) device
    tensors, its state made at once (a slot is reset before the first step), the learning rate
    refilled in place before each step (set_lr)."""

    def __init__(self, params: list[torch.Tensor], lr: torch.Tensor, weight_decay: torch.Tensor):
        # capturable: torch's convention that `step` lives on the parameters' device.
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "capturable": True})
        self.update: Callable[..., None] = stacked_adamw_
        k = lr.shape[0]
        for p in params:
            self.state[p] = {
                "step": torch.zeros(k, device=p.device),
                "exp_avg": torch.zeros_like(p),
                "exp_avg_sq": torch.zeros_like(p),
            }

    def compile(self, mode: str) -> None:
        """Its update compiled (the training step does it with its own functions)."""
        self.update = torch.compile(stacked_adamw_, mode=mode, dynamic=False)

    def set_member(
        self,
        k: int,
        step: int,
        weight_decay: float,
        moments: dict[str, dict[str, torch.Tensor]] | None,
        names: list[str],
    ) -> None:
        """Slot k starts a run: its step count, its weight decay, and its moments (by parameter
        name, from its checkpoint; None: zero, a fresh run). Its learning rate is set before
        every step (set_lr)."""
        group = self.param_groups[0]
        group["weight_decay"][k] = weight_decay
        for name, p in zip(names, group["params"], strict=True):
            state = self.state[p]
            state["step"][k] = step
            for moment in ("exp_avg", "exp_avg_sq"):
                if moments is None:
                    state[moment][k].zero_()
                else:
                    state[moment][k].copy_(moments[moment][name])

    def moments(self) -> dict[str, list[torch.Tensor]]:
        """exp_avg and exp_avg_sq of every parameter (stacked), in parameter order."""
        params = self.param_groups[0]["params"]
        return {m: [self.state[p][m] for p in params] for m in ("exp_avg", "exp_avg_sq")}

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            states = [self.state[p] for p in params]
            self.update(
                params,
                [p.grad for p in params],
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                [s["step"] for s in states],
                group["lr"],
                group["weight_decay"],
            )


def make_optimizer(params: list[torch.Tensor], k: int) -> StackedAdamW:
    """The pack's optimiser; each slot's rates are set when it takes a run (set_member)."""
    device = params[0].device
    return StackedAdamW(params, torch.zeros(k, device=device), torch.zeros(k, device=device))


def set_lr(optimizer: StackedAdamW, lrs: list[float]) -> None:
    """Before each step: each slot's learning rate at its own step (0 for an empty slot)."""
    # Non-blocking: a blocking copy from the host would wait for the device every step.
    optimizer.param_groups[0]["lr"].copy_(torch.tensor(lrs), non_blocking=True)
