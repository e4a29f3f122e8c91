"""Tree U-Net denoiser: convolutions with kernel = stride = s that mirror the grammar's tree.

The length-s**L sequence is reduced by L Conv1d(kernel_size=s, stride=s) blocks to length 1, so
the representation after k down blocks has one vector per level-k node of the RHM tree. The up
path mirrors it with ConvTranspose1d(kernel_size=s, stride=s), each level concatenated with the
matching down level (a skip) and mixed by a 1x1 convolution. Layer norm over channels, GELU, no
dropout and no in-place updates, so ``torch.func.vmap`` over stacked parameters works.

The convolutions keep their nn.Conv1d / nn.ConvTranspose1d parameters, but since kernel = stride
their patches do not overlap and each is computed as one matmul on channels-last activations
(B, n, C). Same arithmetic, and under vmap (packed training) a batched matmul rather than a
grouped convolution, which is many times slower (mkldnn on CPU, cuDNN backward on GPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rhmscale.models.tokens import n_input_ids
from rhmscale.models.transformer import TimeEmbedding


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of a channels-last (B, n, C) tensor."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


def patch_conv(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """conv(x) for kernel_size == stride, channels-last: (B, n, C_in) -> (B, n/s, C_out)."""
    b, n, c = x.shape
    s = conv.kernel_size[0]
    # Weight (C_out, C_in, s) -> (C_out, s*C_in), matching a patch flattened position-major.
    weight = conv.weight.permute(0, 2, 1).reshape(conv.out_channels, s * c)
    return F.linear(x.reshape(b, n // s, s * c), weight, conv.bias)


def patch_conv_transpose(x: torch.Tensor, conv: nn.ConvTranspose1d) -> torch.Tensor:
    """conv(x) for kernel_size == stride, channels-last: (B, n, C_in) -> (B, n*s, C_out)."""
    b, n, c = x.shape
    s = conv.kernel_size[0]
    # Weight (C_in, C_out, s) -> (s*C_out, C_in): each input position emits s output positions.
    weight = conv.weight.permute(2, 1, 0).reshape(s * conv.out_channels, c)
    out = F.linear(x, weight).reshape(b, n * s, conv.out_channels)
    return out + conv.bias


class Down(nn.Module):
    def __init__(self, width: int, s: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(width, width, kernel_size=s, stride=s)
        self.norm = ChannelNorm(width)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        h = patch_conv(x, self.conv)
        if temb is not None:
            h = h + temb
        return F.gelu(self.norm(h))


class Up(nn.Module):
    def __init__(self, width: int, s: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose1d(width, width, kernel_size=s, stride=s)
        self.mix = nn.Conv1d(2 * width, width, kernel_size=1)
        self.norm = ChannelNorm(width)

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor, temb: torch.Tensor | None
    ) -> torch.Tensor:
        h = torch.cat([patch_conv_transpose(x, self.conv), skip], dim=-1)
        h = F.linear(h, self.mix.weight.squeeze(-1), self.mix.bias)  # the 1x1 convolution
        if temb is not None:
            h = h + temb
        return F.gelu(self.norm(h))


class TreeUNet(nn.Module):
    """forward(x_t (B, s**L) long, t (B,) float) -> logits (B, s**L, vocab_size).

    With ``time_cond`` an embedding of t is added (to every position) at the input and after
    every down and up convolution; otherwise t is ignored.
    """

    def __init__(
        self, vocab_size: int, s: int, L: int, width: int, time_cond: bool = False
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.s = s
        self.L = L
        self.seq_len = s**L
        self.time_cond = time_cond
        self.tok_emb = nn.Embedding(n_input_ids(vocab_size), width)
        self.time_emb = TimeEmbedding(width) if time_cond else None
        self.down = nn.ModuleList(Down(width, s) for _ in range(L))
        self.up = nn.ModuleList(Up(width, s) for _ in range(L))
        self.norm_out = ChannelNorm(width)
        self.head = nn.Conv1d(width, vocab_size, kernel_size=1)
        nn.init.normal_(self.tok_emb.weight, std=1.0)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x_t.shape[-1] != self.seq_len:
            raise ValueError(f"TreeUNet expects length s**L={self.seq_len}, got {x_t.shape[-1]}")
        h = self.tok_emb(x_t)  # (B, n, width): channels-last throughout
        temb = None
        if self.time_emb is not None:
            temb = self.time_emb(t).unsqueeze(1)  # (B, 1, width): broadcast over positions
            h = h + temb
        skips = []
        for block in self.down:  # level k -> k+1: length s**(L-k) -> s**(L-k-1)
            skips.append(h)
            h = block(h, temb)
        for block, skip in zip(reversed(self.up), reversed(skips), strict=True):
            h = block(h, skip, temb)
        h = self.norm_out(h)
        return F.linear(h, self.head.weight.squeeze(-1), self.head.bias)  # (B, n, vocab_size)
