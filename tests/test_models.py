"""Denoisers and the masked diffusion process (CPU, a few seconds)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.func import functional_call, stack_module_state, vmap

from rhmscale.config import GrammarConfig, ModelConfig
from rhmscale.models import (
    MaskedDiffusion,
    Transformer,
    TreeUNet,
    build_denoiser,
    count_parameters,
)
from rhmscale.models.diffusion import Schedule

GRAMMARS = [(8, 2, 3), (5, 3, 2), (16, 4, 2), (3, 2, 1)]  # (v, s, L)


def make(arch: str, v: int, s: int, L: int, width: int = 32, time_cond: bool = False):
    if arch == "transformer":
        return Transformer(v, s**L, width=width, depth=2, heads=4, time_cond=time_cond)
    return TreeUNet(v, s, L, width=width, time_cond=time_cond)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Uniform(torch.nn.Module):
    """Denoiser with uniform logits over v tokens."""

    def __init__(self, v: int) -> None:
        super().__init__()
        self.v = v

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*x_t.shape, self.v)


class Oracle(torch.nn.Module):
    """All mass on a fixed sequence; records every input it sees."""

    def __init__(self, target: torch.Tensor, v: int, time_cond: bool = True) -> None:
        super().__init__()
        self.target, self.v, self.time_cond = target, v, time_cond
        self.seen: list[torch.Tensor] = []

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.seen.append(x_t.clone())
        logits = torch.full((*x_t.shape, self.v), -1e9)
        return logits.scatter(-1, self.target.expand_as(x_t).unsqueeze(-1), 0.0)


# ---------------------------------------------------------------- architectures


@pytest.mark.parametrize("arch", ["transformer", "tree_unet"])
@pytest.mark.parametrize("time_cond", [False, True])
@pytest.mark.parametrize(("v", "s", "L"), GRAMMARS)
def test_shapes_and_dtypes(arch, time_cond, v, s, L):
    torch.manual_seed(0)
    model = make(arch, v, s, L, time_cond=time_cond)
    x = torch.randint(0, v + 1, (5, s**L))  # includes MASK = v
    t = torch.rand(5)
    out = model(x, t)
    assert out.shape == (5, s**L, v)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    if time_cond:  # t actually matters
        assert not torch.allclose(out, model(x, torch.rand(5)))
    else:
        assert torch.equal(out, model(x, torch.rand(5)))


def test_tree_unet_rejects_wrong_length():
    with pytest.raises(ValueError, match="s\\*\\*L"):
        TreeUNet(4, 2, 3, 16)(torch.zeros(2, 4, dtype=torch.long), torch.rand(2))


@pytest.mark.parametrize("s", [2, 3])
def test_tree_unet_patch_matmuls_equal_the_convolutions(s):
    from rhmscale.models.tree_unet import patch_conv, patch_conv_transpose

    torch.manual_seed(0)
    x = torch.randn(3, 5, s * 4)  # (B, C, n)
    conv = torch.nn.Conv1d(5, 6, kernel_size=s, stride=s)
    up = torch.nn.ConvTranspose1d(5, 6, kernel_size=s, stride=s)
    channels_last = x.transpose(1, 2)
    torch.testing.assert_close(patch_conv(channels_last, conv), conv(x).transpose(1, 2))
    torch.testing.assert_close(patch_conv_transpose(channels_last, up), up(x).transpose(1, 2))


@pytest.mark.parametrize("arch", ["transformer", "tree_unet"])
def test_no_dropout_forward_is_deterministic(arch):
    model = make(arch, 8, 2, 3).train()
    x, t = torch.randint(0, 9, (4, 8)), torch.rand(4)
    assert torch.equal(model(x, t), model(x, t))


# ---------------------------------------------------------------- schedule and times


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_schedule_endpoints_and_derivative(name):
    sch = Schedule(name)
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    assert sch.alpha(torch.tensor(0.0)).item() == pytest.approx(1.0)
    assert sch.alpha(torch.tensor(1.0)).item() == pytest.approx(0.0, abs=1e-7)
    h = 1e-6
    numeric = (sch.alpha(t + h) - sch.alpha(t - h)) / (2 * h)
    torch.testing.assert_close(sch.dalpha(t), numeric, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(sch.mask_prob(t), 1 - sch.alpha(t))
    torch.testing.assert_close(sch.weight(t), -sch.dalpha(t) / (1 - sch.alpha(t)))


@pytest.mark.parametrize("B", [1, 7, 64])
def test_antithetic_times_are_stratified(B):
    diff = MaskedDiffusion(8, antithetic=True, t_min=1e-3)
    for seed in range(20):
        t = diff.sample_times(B, "cpu", gen(seed))
        assert t.shape == (B,) and t.dtype == torch.float32
        assert (t >= diff.t_min).all() and (t <= 1).all()
        bins = ((t - diff.t_min) / (1 - diff.t_min) * B).floor().long().clamp(max=B - 1)
        assert sorted(bins.tolist()) == list(range(B))  # exactly one per 1/B bin


def test_times_reproducible_and_iid_mode():
    diff = MaskedDiffusion(8, antithetic=False)
    assert torch.equal(diff.sample_times(16, "cpu", gen(3)), diff.sample_times(16, "cpu", gen(3)))
    t = diff.sample_times(10_000, "cpu", gen(0))
    assert (t >= diff.t_min).all() and (t <= 1).all()
    assert t.mean().item() == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_corrupt_masks_with_probability_one_minus_alpha(schedule):
    diff = MaskedDiffusion(8, schedule=schedule)
    x0 = torch.randint(0, 8, (4000, 16), generator=gen(0))
    for tv in [0.1, 0.5, 0.9]:
        t = torch.full((4000,), tv)
        xt = diff.corrupt(x0, t, gen(1))
        masked = xt == diff.mask_id
        assert torch.equal(xt[~masked], x0[~masked])  # unmasked tokens are unchanged
        expected = 1 - diff.schedule.alpha(torch.tensor(tv)).item()
        assert masked.float().mean().item() == pytest.approx(expected, abs=0.01)
    assert torch.equal(diff.corrupt(x0, torch.ones(4000), gen(2)), torch.full_like(x0, 8))


# ---------------------------------------------------------------- ELBO


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("antithetic", [True, False])
def test_uniform_denoiser_loss_is_log_v(schedule, antithetic):
    """E[loss] = log v * E_t[-alpha'(t)] = log v: checks the ELBO weighting.

    400 batches of 256 sequences of length 8; the Monte-Carlo standard error is about 0.3% of
    log v (heavy-tailed at small t), so a 2% relative tolerance is a > 4-sigma test.
    """
    v = 8
    diff = MaskedDiffusion(v, schedule=schedule, antithetic=antithetic)
    den = Uniform(v)
    g = gen(0)
    x0 = torch.randint(0, v, (256, 8), generator=gen(1))
    losses = torch.stack([diff.loss(den, x0, g) for _ in range(400)])
    assert losses.mean().item() == pytest.approx(math.log(v), rel=0.02)
    held_out = diff.elbo_per_token(den, x0, gen(2), n_time_samples=200)
    assert held_out.item() == pytest.approx(math.log(v), rel=0.03)


@pytest.mark.parametrize("arch", ["transformer", "tree_unet"])
@pytest.mark.parametrize("time_cond", [False, True])
def test_loss_finite_and_gradients_reach_every_parameter(arch, time_cond):
    torch.manual_seed(0)
    model = make(arch, 8, 2, 3, time_cond=time_cond)
    diff = MaskedDiffusion(8, schedule="cosine")
    x0 = torch.randint(0, 8, (64, 8), generator=gen(0))
    loss = diff.loss(model, x0, gen(1))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_loss_is_float32_under_bf16_autocast():
    torch.manual_seed(0)
    model = make("transformer", 8, 2, 3)
    diff = MaskedDiffusion(8)
    x0 = torch.randint(0, 8, (16, 8), generator=gen(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x0, torch.rand(16)).dtype == torch.bfloat16
        loss = diff.loss(model, x0, gen(1))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_loss_from_logits_matches_definition():
    diff = MaskedDiffusion(4)
    x0 = torch.tensor([[0, 1, 2, 3]])
    xt = torch.tensor([[4, 1, 4, 3]])
    t = torch.tensor([0.5])
    logits = torch.zeros(1, 4, 4)
    # two masked positions, CE log 4 each, weight 1/t = 2, divided by n = 4
    expected = 2 * 2 * math.log(4) / 4
    assert diff.loss_from_logits(logits, x0, xt, t).item() == pytest.approx(expected)


@pytest.mark.parametrize("arch", ["transformer", "tree_unet"])
def test_training_a_tiny_model_decreases_the_loss(arch):
    torch.manual_seed(0)
    v = 8
    model = make(arch, v, 2, 3, width=32)
    diff = MaskedDiffusion(v)
    data = torch.randint(0, v, (4, 8), generator=gen(0)).repeat(16, 1)  # 4 sequences, batch 64
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = gen(1)
    losses = []
    for _ in range(100):
        loss = diff.loss(model, data, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.6 * first, (first, last)
    val = diff.elbo_per_token(model, data, gen(2), n_time_samples=8)
    assert val.item() < 0.6 * math.log(v)


# ---------------------------------------------------------------- sampler


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [None, 3, 20])
def test_sampler_returns_valid_tokens(schedule, steps):
    torch.manual_seed(0)
    v = 5
    model = make("transformer", v, 3, 2)
    diff = MaskedDiffusion(v, schedule=schedule)
    x = diff.sample(model, 13, 9, steps, "cpu", gen(0), batch_size=4)
    assert x.shape == (13, 9) and x.dtype == torch.long
    assert (x >= 0).all() and (x < v).all()  # no MASK left


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_oracle_denoiser_is_reproduced_exactly(schedule):
    target = torch.tensor([3, 1, 4, 1, 5, 0, 2, 6])
    diff = MaskedDiffusion(7, schedule=schedule)
    x = diff.sample(Oracle(target, 7), 10, 8, 0, "cpu", gen(0))
    assert torch.equal(x, target.expand(10, 8))


def test_same_seed_same_samples():
    torch.manual_seed(0)
    model = make("tree_unet", 8, 2, 3)
    diff = MaskedDiffusion(8, schedule="cosine")
    a = diff.sample(model, 32, 8, 8, "cpu", gen(5), batch_size=10)
    b = diff.sample(model, 32, 8, 8, "cpu", gen(5), batch_size=10)
    c = diff.sample(model, 32, 8, 8, "cpu", gen(6), batch_size=10)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("steps", [4, 8, 30])
def test_sampler_carries_unmasked_tokens_over(steps):
    """Once a position is revealed it never changes, and each step only reveals tokens."""
    target = torch.randint(0, 6, (8,), generator=gen(0))

    class Noisy(Oracle):  # random logits: revealed tokens differ from step to step
        def forward(self, x_t, t):
            self.seen.append(x_t.clone())
            return torch.randn(*x_t.shape, self.v, generator=self.g)

    den = Noisy(target, 6)
    den.g = gen(9)
    diff = MaskedDiffusion(6)
    final = diff.sample(den, 50, 8, steps, "cpu", gen(1))
    states = [*den.seen, final]
    assert (states[0] == 6).all()  # starts fully masked
    for before, after in zip(states, states[1:], strict=False):
        revealed = before != 6
        assert torch.equal(after[revealed], before[revealed])
    assert len(den.seen) <= steps


def test_sampler_restores_training_mode_and_leaves_no_grad():
    model = make("transformer", 4, 2, 2).train()
    x = MaskedDiffusion(4).sample(model, 3, 4, 0, "cpu", gen(0))
    assert model.training and not x.requires_grad
    model.eval()
    MaskedDiffusion(4).sample(model, 3, 4, 0, "cpu", gen(0))
    assert not model.training


def test_sampler_sees_eval_mode():
    target = torch.zeros(4, dtype=torch.long)

    class Probe(Oracle):
        def forward(self, x_t, t):
            assert not self.training
            assert not torch.is_grad_enabled()
            return super().forward(x_t, t)

    MaskedDiffusion(3).sample(Probe(target, 3).train(), 2, 4, 0, "cpu", gen(0))


# ---------------------------------------------------------------- torch.func (packed training)


@pytest.mark.parametrize("arch", ["transformer", "tree_unet"])
@pytest.mark.parametrize("time_cond", [False, True])
def test_vmap_over_stacked_members_matches_each_member(arch, time_cond):
    torch.manual_seed(0)
    members = [make(arch, 8, 2, 3, time_cond=time_cond) for _ in range(3)]
    params, buffers = stack_module_state(members)
    base = copy.deepcopy(members[0]).to("meta")

    def call(p, b, x, t):
        return functional_call(base, (p, b), (x, t))

    x = torch.randint(0, 9, (6, 8), generator=gen(0))
    t = torch.rand(6, generator=gen(1))
    out = vmap(call, in_dims=(0, 0, None, None))(params, buffers, x, t)
    assert out.shape == (3, 6, 8, 8)
    for i, member in enumerate(members):
        torch.testing.assert_close(out[i], member(x, t), rtol=1e-5, atol=1e-5)

    # Per-member inputs and gradients through the vmapped call (what packed training needs).
    xs = torch.randint(0, 9, (3, 6, 8), generator=gen(2))
    out = vmap(call, in_dims=(0, 0, 0, None))(params, buffers, xs, t)
    out.square().mean(dim=(1, 2, 3)).sum().backward()
    for i, member in enumerate(members):
        member.zero_grad()
        member(xs[i], t).square().mean().backward()
        for name, p in member.named_parameters():
            torch.testing.assert_close(params[name].grad[i], p.grad, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- build from config


@pytest.mark.parametrize("arch", ["transformer", "tree_unet"])
@pytest.mark.parametrize("time_cond", [False, True])
def test_build_denoiser_from_config(arch, time_cond):
    grammar = GrammarConfig(v=6, m=2, s=3, L=2)
    model_cfg = ModelConfig(arch=arch, width=32, depth=2, heads=2, time_cond=time_cond)
    model = build_denoiser(model_cfg, grammar)
    assert isinstance(model, Transformer if arch == "transformer" else TreeUNet)
    assert model.time_cond is time_cond
    out = model(torch.randint(0, 7, (2, 9)), torch.rand(2))
    assert out.shape == (2, 9, 6)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters()) > 0


def test_parameter_counts_match_the_architecture():
    grammar = GrammarConfig(v=8, m=2, s=2, L=3)
    v, n, w, depth = 8, 8, 128, 4
    block = 2 * (2 * w) + (3 * w * w + 3 * w) + (w * w + w) + (4 * w * w + 4 * w) + (4 * w * w + w)
    expected = (v + 1) * w + n * w + depth * block + 2 * w + (w * v + v)
    tr = build_denoiser(ModelConfig(arch="transformer", width=w, depth=depth, heads=4), grammar)
    assert count_parameters(tr) == expected
    unet = build_denoiser(ModelConfig(arch="tree_unet", width=w), grammar)
    assert 0 < count_parameters(unet) < count_parameters(tr)


class AllEqual(torch.nn.Module):
    """Exact conditionals of the uniform law over the constant sequences (0,..,0) and (1,..,1)."""

    def forward(self, x, t):
        revealed = x < 2
        first = torch.where(revealed, x, 0).amax(dim=1)  # the common value, if any is revealed
        any_revealed = revealed.any(dim=1)
        logits = torch.zeros(x.shape[0], x.shape[1], 2)
        hot = torch.nn.functional.one_hot(first, 2).float() * 50 - 25
        return torch.where(any_revealed[:, None, None], hot[:, None, :], logits)


def test_exact_sampler_keeps_correlated_tokens_consistent():
    diff = MaskedDiffusion(2)
    exact = diff.sample(AllEqual(), 400, 8, 0, "cpu", gen(0))
    assert bool((exact == exact[:, :1]).all())  # every sample constant
    assert 0.35 < exact[:, 0].float().mean() < 0.65  # both sequences drawn
    # A time grid with one step per token reveals several tokens at once, independently.
    grid = diff.sample(AllEqual(), 400, 8, 8, "cpu", gen(0))
    assert not bool((grid == grid[:, :1]).all())


def test_models_package_imports_nothing_heavy():
    import subprocess
    import sys

    code = (
        "import sys, rhmscale.models; "
        "bad = [m for m in ('lightning', 'pytorch_lightning', 'wandb', 'submitit', 'pandas') "
        "if m in sys.modules]; print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
