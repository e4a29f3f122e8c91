"""Masked (absorbing-state) discrete diffusion, MD4/MDLM style.

Forward process: each token of a clean sequence x0 is independently replaced by MASK
(models.tokens.mask_id) with probability ``1 - alpha(t)``; alpha(0) = 1 (clean), alpha(1) = 0
(all masked). The continuous-time ELBO is

    -log p(x0) <= E_t [ -alpha'(t) / (1 - alpha(t)) * sum_{i masked} -log p(x0_i | x_t) ]

and is reported per token in nats. The ancestral sampler walks t from 1 to 0; a still-masked
token is revealed between t and s < t with probability (alpha(s) - alpha(t)) / (1 - alpha(t)),
and revealed tokens never change again.

A denoiser is any callable ``denoiser(x_t: LongTensor (B, n), t: FloatTensor (B,))`` returning
logits ``(B, n, vocab_size)`` over the clean tokens (never over MASK).

Packs (K runs trained together, models.stacked): every method also accepts a sequence of K
generators instead of one. Tensors then carry a leading member dimension (K, B, n), the denoiser
maps (K, B, n), (K, B) -> (K, B, n, vocab_size), and each member's random numbers come from its
own generator in the same order as for a lone run, so a member sees exactly its lone stream.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from rhmscale.models.tokens import mask_id

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Generators = torch.Generator | Sequence[torch.Generator] | None
# Called before each denoiser call of a loop that can run long (sampling, the held-out ELBO); it
# raises to abandon the loop: how a stop request reaches an evaluation (training.evaluation).
Check = Callable[[], None] | None


def _members(generator: Generators) -> tuple[int, ...]:
    """The leading member shape: (K,) for a sequence of K generators, () otherwise."""
    return (len(generator),) if isinstance(generator, Sequence) else ()


def _rand(shape: tuple[int, ...], device, generator: Generators) -> torch.Tensor:
    """torch.rand of `shape`, or for K generators one draw each, stacked to (K, *shape)."""
    if isinstance(generator, Sequence):
        return torch.stack([torch.rand(shape, device=device, generator=g) for g in generator])
    return torch.rand(shape, device=device, generator=generator)


class Schedule:
    """Noise schedule alpha(t): probability that a token is still clean at time t.

    name: "linear" or "cosine" (config.DiffusionConfig.schedule, validated there)."""

    def __init__(self, name: str = "linear") -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Schedule({self.name!r})"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        if self.name == "linear":
            return 1.0 - t
        return torch.cos(0.5 * math.pi * t)

    def time_of(self, alpha: float) -> float:
        """Inverse of alpha(t): the time at which a fraction alpha of tokens is unmasked."""
        if self.name == "linear":
            return 1.0 - alpha
        return 2.0 / math.pi * math.acos(min(max(alpha, 0.0), 1.0))

    def dalpha(self, t: torch.Tensor) -> torch.Tensor:
        """d alpha / d t (non-positive)."""
        if self.name == "linear":
            return -torch.ones_like(t)
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def mask_prob(self, t: torch.Tensor) -> torch.Tensor:
        """1 - alpha(t), computed without cancellation at small t."""
        if self.name == "linear":
            return t.clone()
        return 2.0 * torch.sin(0.25 * math.pi * t) ** 2

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """ELBO weight -alpha'(t) / (1 - alpha(t)), in closed form (stable at small t)."""
        if self.name == "linear":
            return 1.0 / t
        # (pi/2) sin(pi t/2) / (2 sin^2(pi t/4)) = (pi/2) cot(pi t/4)
        return 0.5 * math.pi / torch.tan(0.25 * math.pi * t)


class MaskedDiffusion:
    """Absorbing-state diffusion over ``vocab_size`` tokens and MASK (models.tokens).

    Stateless apart from its settings: every method takes the denoiser and an optional
    ``torch.Generator`` (on the same device as the data) for all of its random draws.
    """

    def __init__(
        self,
        vocab_size: int,
        schedule: str = "linear",
        antithetic: bool = True,
        t_min: float = 1e-4,
    ) -> None:
        if not 0.0 < t_min < 1.0:
            raise ValueError(f"t_min must lie in (0, 1), got {t_min}")
        self.vocab_size = vocab_size
        self.mask_id = mask_id(vocab_size)
        self.schedule = Schedule(schedule)
        self.antithetic = antithetic
        self.t_min = t_min

    def __repr__(self) -> str:
        return (
            f"MaskedDiffusion(vocab_size={self.vocab_size}, schedule={self.schedule.name!r}, "
            f"antithetic={self.antithetic}, t_min={self.t_min})"
        )

    # ------------------------------------------------------------------ forward process

    # Each random step is split into its draw (uniforms from the generator) and a pure function
    # of the draw, so a training step can draw eagerly and run the rest as one CUDA graph.

    def time_noise_shape(self, batch: int) -> tuple[int, ...]:
        """Uniforms that sample_times draws: one (antithetic) or one per sequence."""
        return (1,) if self.antithetic else (batch,)

    def times_from_noise(self, r: torch.Tensor, batch: int) -> torch.Tensor:
        """Times in [t_min, 1], float32 (..., batch), from the uniforms r (..., time_noise_shape).

        Antithetic: t_i = (r + i/B) mod 1, rescaled."""
        if self.antithetic:
            offsets = torch.arange(batch, device=r.device, dtype=torch.float32) / batch
            r = torch.remainder(r + offsets, 1.0)
        return self.t_min + (1.0 - self.t_min) * r

    def sample_times(
        self,
        batch: int,
        device: torch.device | str | None = None,
        generator: Generators = None,
    ) -> torch.Tensor:
        """Times in [t_min, 1], float32 (batch,) ((K, batch) for K generators)."""
        return self.times_from_noise(_rand(self.time_noise_shape(batch), device, generator), batch)

    def corrupt_with_noise(
        self, x0: torch.Tensor, t: torch.Tensor, u: torch.Tensor
    ) -> torch.Tensor:
        """Mask token i of x0 (..., B, n) where its uniform u[..., i] < 1 - alpha(t_b)."""
        p = self.schedule.mask_prob(t.float()).unsqueeze(-1)  # (..., B, 1)
        return torch.where(u < p, torch.full_like(x0, self.mask_id), x0)

    def corrupt(
        self, x0: torch.Tensor, t: torch.Tensor, generator: Generators = None
    ) -> torch.Tensor:
        """Mask each token of x0 (B, n) independently with probability 1 - alpha(t_b)."""
        u = _rand(tuple(x0.shape[-2:]), x0.device, generator)
        return self.corrupt_with_noise(x0, t, u)

    # ------------------------------------------------------------------ ELBO

    def loss_from_logits(
        self, logits: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """Per-sequence ELBO per token in nats, shape (B,); cross-entropy in float32."""
        n = x0.shape[-1]
        ce = F.cross_entropy(logits.float().flatten(0, -2), x0.flatten(), reduction="none").view(
            x0.shape
        )
        masked = (x_t == self.mask_id).float()
        return self.schedule.weight(t.float()) * (ce * masked).sum(dim=-1) / n

    def loss(
        self, denoiser: Denoiser, x0: torch.Tensor, generator: Generators = None
    ) -> torch.Tensor:
        """Monte-Carlo continuous-time ELBO per token (nats), averaged over the batch (per
        member for a pack: shape (K,))."""
        t = self.sample_times(x0.shape[-2], x0.device, generator)
        x_t = self.corrupt(x0, t, generator)
        return self.loss_from_logits(denoiser(x_t, t), x0, x_t, t).mean(dim=-1)

    @torch.no_grad()
    def elbo_per_token(
        self,
        denoiser: Denoiser,
        x0: torch.Tensor,
        generator: Generators = None,
        n_time_samples: int = 1,
        check: Check = None,
    ) -> torch.Tensor:
        """Held-out ELBO per token (nats): the training estimator, averaged over the batch and
        ``n_time_samples`` independent draws of (t, x_t). A 0-dim float32 tensor ((K,): pack).
        check: as for sample, before each draw."""
        if n_time_samples < 1:
            raise ValueError(f"n_time_samples must be >= 1, got {n_time_samples}")
        total = torch.zeros((), device=x0.device)
        for _ in range(n_time_samples):
            if check is not None:
                check()
            total = total + self.loss(denoiser, x0, generator).float()
        return total / n_time_samples

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample(
        self,
        denoiser: Denoiser,
        n: int,
        seq_len: int,
        steps: int | None = None,
        device: torch.device | str | None = None,
        generator: Generators = None,
        batch_size: int | None = None,
        check: Check = None,
    ) -> torch.Tensor:
        """Ancestral sampling of n sequences, LongTensor (n, seq_len) with values in [0, v)
        ((K, n, seq_len) for a pack).

        ``steps`` uniform steps from t=1 to t=0. 0 or None: the exact sampler that reveals one
        token per step in a uniformly random order (seq_len steps; a time-uniform grid with
        seq_len steps would reveal several correlated tokens independently in one step, which
        breaks grammatical agreement between siblings). A module denoiser
        is put in eval mode for the duration and restored afterwards. Every random draw comes
        from ``generator``: the same seed, n and batch_size give the same samples (a different
        batch_size consumes the stream in a different order, so gives different samples).
        check(), when given, is called before every denoiser call (seq_len of them per batch
        for the exact sampler: minutes on a CPU for a large evaluation); it may raise.
        """
        batch_size = batch_size or n
        draw = self._sample_batch if steps else self._sample_batch_one_by_one
        was_training = getattr(denoiser, "training", None)
        if isinstance(denoiser, torch.nn.Module):
            denoiser.eval()
        try:
            chunks = [
                draw(denoiser, min(batch_size, n - i), seq_len, steps, device, generator, check)
                for i in range(0, n, batch_size)
            ]
        finally:
            if isinstance(denoiser, torch.nn.Module) and was_training is not None:
                denoiser.train(was_training)
        if not chunks:
            shape = (*_members(generator), 0, seq_len)
            return torch.empty(shape, dtype=torch.long, device=device)
        return torch.cat(chunks, dim=-2)

    def _sample_batch(
        self,
        denoiser: Denoiser,
        b: int,
        seq_len: int,
        steps: int,
        device: torch.device | str | None,
        generator: Generators,
        check: Check,
    ) -> torch.Tensor:
        lead = _members(generator)
        x = torch.full((*lead, b, seq_len), self.mask_id, dtype=torch.long, device=device)
        grid = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        alphas = self.schedule.alpha(grid)
        for k in range(steps):
            a_t, a_s = float(alphas[k]), float(alphas[k + 1])
            last = k == steps - 1  # reaches alpha(0) = 1: every remaining mask is revealed
            p = 1.0 if last else min(max((a_s - a_t) / max(1.0 - a_t, 1e-12), 0.0), 1.0)
            # Draw every step's randomness up front so the stream does not depend on x.
            u = _rand((b, seq_len), device, generator)
            g = _rand((b, seq_len, self.vocab_size), device, generator)
            reveal = (x == self.mask_id) & (u < p)
            if not bool(reveal.any()):
                continue  # nothing changes: skip the denoiser call
            if check is not None:
                check()
            t = torch.full((*lead, b), float(grid[k]), dtype=torch.float32, device=device)
            logits = denoiser(x, t).float()
            gumbel = -torch.log(-torch.log(g.clamp(1e-20, 1.0 - 1e-7)))
            tokens = torch.argmax(logits + gumbel, dim=-1)
            x = torch.where(reveal, tokens, x)  # carry-over: revealed tokens never change
        return x

    def _sample_batch_one_by_one(
        self,
        denoiser: Denoiser,
        b: int,
        seq_len: int,
        steps: int | None,
        device: torch.device | str | None,
        generator: Generators,
        check: Check,
    ) -> torch.Tensor:
        lead = _members(generator)
        x = torch.full((*lead, b, seq_len), self.mask_id, dtype=torch.long, device=device)
        order = torch.argsort(_rand((b, seq_len), device, generator), dim=-1)
        for k in range(seq_len):
            if check is not None:
                check()
            # k tokens revealed: the time whose alpha(t) is k / seq_len.
            t_k = self.schedule.time_of(k / seq_len)
            t = torch.full((*lead, b), t_k, dtype=torch.float32, device=device)
            pos = order[..., k : k + 1]  # (b, 1)
            logits = denoiser(x, t).float()  # (b, n, v)
            index = pos.unsqueeze(-1).expand(*pos.shape, self.vocab_size)
            logits = logits.gather(-2, index).squeeze(-2)  # (b, v): the revealed position's
            g = _rand((b, self.vocab_size), device, generator)
            gumbel = -torch.log(-torch.log(g.clamp(1e-20, 1.0 - 1e-7)))
            tokens = torch.argmax(logits + gumbel, dim=-1)
            x = x.scatter(-1, pos, tokens.unsqueeze(-1))
        return x
