"""Bidirectional transformer denoiser for masked diffusion.

Written so that ``torch.func.stack_module_state`` + ``vmap(functional_call)`` works: attention
goes through ``F.scaled_dot_product_attention`` (not ``nn.MultiheadAttention``, whose fast path
breaks torch.func), no dropout, no in-place updates of parameters or buffers.

Under a torch.func transform (vmap, grad, ...) attention is computed with plain matmul/softmax,
the same arithmetic as SDPA's math backend: the fused SDPA kernels have no batching rule on CPU
(a slow per-member loop) and, on CUDA (torch 2.11), backward through the memory-efficient kernel
under vmap fails with "LSE is not correctly aligned".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rhmscale.models.tokens import n_input_ids


def sinusoidal_features(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """(B,) times in [0, 1] -> (B, dim) sin/cos features (t scaled by 1000, as in DDPM)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    angles = 1000.0 * t.float().unsqueeze(-1) * freqs
    feats = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        feats = F.pad(feats, (0, 1))
    return feats


class TimeEmbedding(nn.Module):
    """Sinusoidal features of t through a two-layer MLP: (B,) -> (B, width)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        h = sinusoidal_features(t, self.width).to(self.fc1.weight.dtype)
        return self.fc2(F.gelu(self.fc1(h)))


def _functorch_active() -> bool:
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active()) if active is not None else False


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Bidirectional attention over (..., n, d): fused SDPA, or plain math under torch.func."""
    if not _functorch_active():
        return F.scaled_dot_product_attention(q, k, v)
    scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
    return torch.softmax(scores.float(), dim=-1).to(v.dtype) @ v


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, w // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, n, d)
        out = attention(q, k, v)  # bidirectional: no mask, no dropout
        return self.proj(out.transpose(1, 2).reshape(b, n, w))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + MLP(LN(x)) with a 4x GELU MLP."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    """Encoder-only denoiser: forward(x_t (B, n) long, t (B,) float) -> logits (B, n, vocab_size).

    Token ids are the vocab_size symbols and MASK (models.tokens). With ``time_cond`` an
    embedding of t is added to every position; otherwise t is ignored. width must be divisible
    by heads (config.ModelConfig checks it).
    """

    def __init__(
        self,
        vocab_size: int,
        seq_len: int,
        width: int,
        depth: int,
        heads: int,
        time_cond: bool = False,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.time_cond = time_cond
        self.tok_emb = nn.Embedding(n_input_ids(vocab_size), width)
        self.pos_emb = nn.Parameter(torch.empty(seq_len, width))
        self.time_emb = TimeEmbedding(width) if time_cond else None
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb, std=0.02)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.tok_emb(x_t) + self.pos_emb
        if self.time_emb is not None:
            h = h + self.time_emb(t).unsqueeze(1)
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h))
