"""One optimiser step of every member of a pack: eager, compiled, or compiled and replayed as one
CUDA graph.

Why a graph: at the batch sizes the science uses (256) a small model's step is a few hundred
short kernels, and launching them takes longer than running them (the GPU was busy 13-16% of
the wall time). Captured once, the whole step (minibatch gather, corruption, forward, loss,
backward, per-member clipping, AdamW, the running loss sum) is one launch.

What stays outside the graph is each member's random draws, from its own generators: that is
what makes a member's trajectory its lone run's whatever pack it is in. The draws are written
into static buffers the step reads, so eager, compiled and graphed steps compute the same thing.

train.compile (config.COMPILE_SETTINGS) -> how the step runs (StepPlan):
  auto             GPU: graphed at once, eager, while another process compiles the step
                   (training.compile_ahead); then compiled and graphed. CPU: eager
  off              eager
  graph            eager and graphed on a GPU (no compilation: starts in seconds)
  default          compiled
  max-autotune     compiled in that mode (inductor's own CUDA graphs included)
  reduce-overhead  compiled and graphed on a GPU (the whole step; torch's own mode of that name
                   graphs only the forward and backward)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from rhmscale.models import MaskedDiffusion
from rhmscale.models.stacked import StackedDenoiser
from rhmscale.training.adamw import StackedAdamW, set_lr

# Eager steps before capture: compilation, autotuning and lazy CUDA initialisation happen
# there (they cannot happen inside a capture). They are real training steps.
WARMUP_STEPS = 3


@dataclass(frozen=True)
class StepPlan:
    compile_mode: str | None  # torch.compile mode, None for eager
    graphed: bool  # capture the whole step as one CUDA graph
    # Start eager (graphed) and compile in another process, then switch (use_compiled): see
    # training.compile_ahead for why.
    compile_ahead: bool = False

    @classmethod
    def of(cls, setting: str, device: torch.device) -> StepPlan:
        gpu = device.type == "cuda"
        if setting == "off" or (setting == "auto" and not gpu):
            return cls(None, False)
        if setting == "graph":
            return cls(None, gpu)
        if setting == "auto":
            return cls("default", True, compile_ahead=True)
        if setting == "reduce-overhead":
            return cls("default", gpu)
        return cls(setting, False)


def clip_per_member(grads: list[torch.Tensor], max_norm: torch.Tensor) -> None:
    """clip_grad_norm_ for each member's slice of stacked gradients; max_norm (K,), 0 = off."""
    k = max_norm.shape[0]
    norms = torch.stack([torch.linalg.vector_norm(g.reshape(k, -1), dim=1) for g in grads])
    total = torch.linalg.vector_norm(norms, dim=0)
    coef = torch.where(max_norm > 0, (max_norm / (total + 1e-6)).clamp(max=1.0), 1.0)
    for g in grads:
        g.mul_(coef.view(k, *[1] * (g.dim() - 1)))


class TrainStep:
    """Callable: one step of every member at its learning rate; returns the losses (K,).

    Before each call the trainer draws into `batch_index`, `time_noise` and `mask_noise`
    (draw()). The returned tensor is overwritten by the next step: clone it to keep it.
    """

    def __init__(
        self,
        stack: StackedDenoiser,
        diffusion: MaskedDiffusion,
        optimizer: StackedAdamW,
        rows: list[torch.Tensor],
        batch_size: int,
        autocast: Callable[[], contextlib.AbstractContextManager],
        plan: StepPlan,
    ) -> None:
        self.stack, self.diffusion, self.optimizer = stack, diffusion, optimizer
        self.autocast, self.plan = autocast, plan
        device = next(iter(stack.params.values())).device
        # Slot k's training rows from starts[k] (offsets on the device), room for capacity[k].
        self.sizes = [len(r) for r in rows]
        self.capacity = list(self.sizes)
        self.set_data(torch.cat(rows).to(device))
        k, n = stack.k, self.train_data.shape[-1]
        b = batch_size
        self.batch_index = torch.zeros((k, b), dtype=torch.long, device=device)
        self.time_noise = torch.zeros((k, *diffusion.time_noise_shape(b)), device=device)
        self.mask_noise = torch.zeros((k, b, n), device=device)
        self.loss_sum = torch.zeros(k, device=device)
        # Each slot's max gradient norm (0: no clipping), set when it takes a run.
        self.max_norm = torch.zeros(k, device=device)
        # 1 for slots whose run trains, 0 for empty slots and runs that stopped: their loss
        # no longer reaches the update (a tensor the graph reads, so it needs no recapture).
        self.active = torch.zeros(k, device=device)
        self.loss, self.clip = self._forward_loss, clip_per_member
        self.steps_taken = 0
        self.compiled_from: int | None = None  # steps taken when the compiled step took over
        if plan.compile_mode is not None and not plan.compile_ahead:
            self.use_compiled()
        self.calls = 0  # since the step's functions or buffers last changed
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_losses: torch.Tensor | None = None

    def set_data(self, train: torch.Tensor) -> None:
        """All slots' training rows in one device tensor (slot k's from starts[k], room for
        capacity[k]). A new tensor is captured anew: warm-up steps, then a capture."""
        self.starts = [int(s) for s in np.concatenate([[0], np.cumsum(self.capacity)[:-1]])]
        self.train_data = train
        self.offsets = torch.as_tensor(self.starts, device=train.device).view(-1, 1)
        self.graph, self.graph_losses, self.calls = None, None, 0

    def place(self, slot: int, rows: torch.Tensor) -> None:
        """A new run's training rows into its slot (more room if it needs it)."""
        if len(rows) > self.capacity[slot]:
            old, old_starts = self.train_data, self.starts
            self.capacity[slot] = len(rows)
            grown = old.new_zeros((sum(self.capacity), old.shape[-1]))
            new_starts = [int(s) for s in np.concatenate([[0], np.cumsum(self.capacity)[:-1]])]
            for k, (a, b) in enumerate(zip(old_starts, new_starts, strict=True)):
                if k != slot:
                    grown[b : b + self.sizes[k]] = old[a : a + self.sizes[k]]
            self.set_data(grown)
        start = self.starts[slot]
        self.train_data[start : start + len(rows)] = rows.to(self.train_data.device)
        self.sizes[slot] = len(rows)

    def draw(self, slots: list[int], batch_gens: list, noise_gens: list) -> None:
        """The minibatch indices and diffusion noise of the slots that train, each from its
        run's own generators, in the order a lone run draws them."""
        for k in slots:
            size, bg, ng = self.sizes[k], batch_gens[k], noise_gens[k]
            torch.randint(size, self.batch_index[k].shape, generator=bg, out=self.batch_index[k])
            torch.rand(self.time_noise[k].shape, generator=ng, out=self.time_noise[k])
            torch.rand(self.mask_noise[k].shape, generator=ng, out=self.mask_noise[k])

    def use_compiled(self) -> None:
        """Compile the loss, the clipping and a per-member AdamW (torch.compile; with the caches
        warm from compile_ahead this takes seconds); warm-up steps and a capture follow."""
        mode = self.plan.compile_mode or "default"
        # dynamic=False: one graph per shape; vmap's batched tensors cannot take the symbolic
        # sizes that automatic dynamic shapes would give a second pack shape.
        self.loss = torch.compile(self._forward_loss, mode=mode, dynamic=False)
        self.clip = torch.compile(clip_per_member, mode=mode, dynamic=False)
        self.optimizer.compile(mode)
        self.graph, self.graph_losses, self.calls = None, None, 0
        self.compiled_from = self.steps_taken

    def __call__(self, lrs: list[float]) -> torch.Tensor:
        """lrs: each slot's learning rate at its run's step (0 for an empty slot)."""
        self.calls += 1
        self.steps_taken += 1
        set_lr(self.optimizer, lrs)
        if not self.plan.graphed:
            return self._step()
        if self.graph is None:
            if self.calls <= WARMUP_STEPS:
                return self._on_side_stream()
            self._capture()
        self.graph.replay()
        return self.graph_losses

    def _forward_loss(self, params, x0, x_t, t) -> torch.Tensor:
        logits = self.stack(x_t, t, params)
        return self.diffusion.loss_from_logits(logits, x0, x_t, t).mean(dim=-1)

    def _step(self) -> torch.Tensor:
        x0, t, x_t = self.inputs()
        with self.autocast():
            losses = self.loss(self.stack.params, x0, x_t, t)
        (losses * self.active).sum().backward()  # member k's gradient: its own loss only
        self.clip([p.grad for p in self.stack.parameters()], self.max_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        losses = losses.detach()
        self.loss_sum += losses
        return losses

    def _on_side_stream(self) -> torch.Tensor:
        """A warm-up step, run as CUDA's graph docs ask: on a side stream before capture."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            losses = self._step()
        torch.cuda.current_stream().wait_stream(side)
        return losses

    def _capture(self) -> None:
        """Record one step (nothing runs); replay() then runs it with the current buffers."""
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.graph_losses = self._step()

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x0, t, x_t of the drawn minibatch (what the loss takes besides the parameters)."""
        x0 = self.train_data[self.batch_index + self.offsets]  # (K, B, n)
        t = self.diffusion.times_from_noise(self.time_noise, x0.shape[-2])
        return x0, t, self.diffusion.corrupt_with_noise(x0, t, self.mask_noise)

    def pop_loss_sums(self, slots: list[int]) -> torch.Tensor:
        """The slots' training loss summed since their last evaluation (a device tensor, no
        sync), and those sums zeroed."""
        index = torch.tensor(slots, device=self.loss_sum.device)
        sums = self.loss_sum.index_select(0, index)
        self.loss_sum.index_fill_(0, index, 0.0)
        return sums
