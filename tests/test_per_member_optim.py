"""Members of one pack may differ in their optimiser recipe (train.lr, weight_decay, warmup_steps,
lr_schedule): the hand-written StackedAdamW is torch's AdamW per member, a member still follows
its lone run, and each slot counts its own AdamW steps."""

import pytest
import torch

from rhmscale.config import cell_of, member_keys, pack_key
from rhmscale.training import adamw, execute
from rhmscale.training.adamw import StackedAdamW, set_lr
from tests.test_training import (
    MEMBERS,
    assert_rows_close,
    dirs,
    history,
    losses_of,
    small,
)

# Each member its own recipe, besides what packs already allowed (data.P, seeds, clipping).
RECIPES = [
    ["train.weight_decay=0.1"],
    ["train.lr=1e-3", "train.warmup_steps=0", "train.lr_schedule=cosine"],
    ["train.lr=5e-3", "train.warmup_steps=25", "train.weight_decay=0.01"],
]


def recipe_pack(*overrides):
    return [small(*m, *r, *overrides) for m, r in zip(MEMBERS, RECIPES, strict=True)]


def test_the_recipe_is_per_member_science():
    a, b, _ = recipe_pack()
    assert pack_key(a) == pack_key(b) and a.run_id() != b.run_id()
    for key in ("lr", "weight_decay", "warmup_steps", "lr_schedule", "grad_clip"):
        assert f"train.{key}" in member_keys() and f"train.{key}" in cell_of(a)


def test_stacked_adamw_is_torch_adamw_for_each_member():
    torch.manual_seed(0)
    k = 3
    lrs, decays = [1e-2, 3e-3, 1e-3], [0.0, 0.1, 0.5]
    shapes = [(k, 5, 4), (k, 7)]
    stacked = [torch.randn(shape, requires_grad=True) for shape in shapes]
    alone = [[p[i].detach().clone().requires_grad_() for p in stacked] for i in range(k)]
    ours = StackedAdamW(stacked, torch.tensor(lrs), torch.tensor(decays))
    theirs = [
        torch.optim.AdamW(ps, lr=lr, weight_decay=wd, betas=adamw.BETAS, eps=adamw.EPS)
        for ps, lr, wd in zip(alone, lrs, decays, strict=True)
    ]
    for step in range(20):
        grads = [torch.randn(shape) for shape in shapes]
        factor = 0.5 + 0.5 * (step % 7) / 7  # a changing learning rate
        for p, g in zip(stacked, grads, strict=True):
            p.grad = g.clone()
        set_lr(ours, [lr * factor for lr in lrs])
        ours.step()
        for i, opt in enumerate(theirs):
            for p, g in zip(alone[i], grads, strict=True):
                p.grad = g[i].clone()
            opt.param_groups[0]["lr"] = lrs[i] * factor
            opt.step()
    for i in range(k):
        for p, q in zip(stacked, alone[i], strict=True):
            torch.testing.assert_close(p[i], q, rtol=0, atol=1e-6)
            for key in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(
                    ours.state[p][key][i], theirs[i].state[q][key], rtol=0, atol=1e-7
                )
            assert float(ours.state[p]["step"][i]) == float(theirs[i].state[q]["step"]) == 20


def test_a_slot_reset_mid_pack_starts_its_adam_at_step_one():
    """Slot 1 takes a new run after 10 steps: its bias correction counts from 1 again, as a
    fresh torch AdamW does, while slot 0 goes on at step 11."""
    torch.manual_seed(1)
    stacked = torch.randn((2, 6), requires_grad=True)
    ours = StackedAdamW([stacked], torch.tensor([1e-2, 1e-2]), torch.tensor([0.1, 0.0]))
    for _ in range(10):
        stacked.grad = torch.randn(2, 6)
        set_lr(ours, [1e-2, 1e-2])
        ours.step()
    fresh = torch.randn(6)
    with torch.no_grad():
        stacked[1] = fresh
    ours.set_member(1, 0, 0.0, None, ["w"])
    alone = fresh.clone().requires_grad_()
    theirs = torch.optim.AdamW([alone], lr=3e-3, weight_decay=0.0, betas=adamw.BETAS, eps=adamw.EPS)
    for _ in range(5):
        grad = torch.randn(6)
        stacked.grad = torch.stack([torch.randn(6), grad])
        alone.grad = grad.clone()
        set_lr(ours, [1e-2, 3e-3])
        ours.step()
        theirs.step()
    torch.testing.assert_close(stacked[1], alone, rtol=0, atol=1e-6)
    assert ours.state[stacked]["step"].tolist() == [15.0, 5.0]


def final_weights(path):
    """A run's final weights, less the attention key biases: softmax ignores them, so their
    gradient is float noise that Adam scales to lr-sized steps (there a pack that shares its
    recipe differs from its lone runs as much)."""
    params = torch.load(path / "checkpoints" / "last.ckpt", weights_only=True)["params"]
    for name, p in params.items():
        if name.endswith("attn.qkv.bias"):
            width = len(p) // 3
            params[name] = torch.cat([p[:width], p[2 * width :]])
    return params


def member_follows_lone_run(tmp_path, *overrides):
    configs = recipe_pack(*overrides)
    packed, _ = losses_of(configs, dirs(tmp_path / "pack", configs))
    for k, cfg in enumerate(configs):
        (path,) = dirs(tmp_path / "lone", [cfg])
        lone, (outcome,) = losses_of([cfg], [path])
        assert outcome.state == "done"
        torch.testing.assert_close(packed[:, k], lone[:, 0], rtol=0, atol=1e-5)
        weights = final_weights(dirs(tmp_path / "pack", configs)[k])
        torch.testing.assert_close(weights, final_weights(path), rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["transformer", "tree_unet"])
def test_members_with_their_own_recipes_follow_their_lone_runs(tmp_path, arch):
    member_follows_lone_run(tmp_path, f"model.arch={arch}")


@pytest.mark.slow
def test_compiled_members_with_their_own_recipes_follow_their_lone_runs(tmp_path, aot_eager):
    member_follows_lone_run(tmp_path, "train.compile=default", "train.max_steps=20")


@pytest.mark.slow
def test_a_run_moves_between_a_pack_of_recipes_and_lone_training(tmp_path):
    """A checkpoint of a lone run resumes in a pack of other recipes, and the reverse."""
    configs = recipe_pack()[1:]
    whole = execute(configs, dirs(tmp_path / "whole", configs))
    # Each alone, interrupted at step 30, then both resumed as one pack.
    paths = dirs(tmp_path / "lone-then-pack", configs)
    for cfg, path in zip(configs, paths, strict=True):
        assert execute([cfg], [path], stop_at_step=30)[0].state == "interrupted"
    assert [o.state for o in execute(configs, paths)] == ["done", "done"]
    # Packed, interrupted at step 20, then each resumed alone.
    paths2 = dirs(tmp_path / "pack-then-lone", configs)
    assert [o.state for o in execute(configs, paths2, stop_at_step=20)] == ["interrupted"] * 2
    for cfg, path in zip(configs, paths2, strict=True):
        assert execute([cfg], [path])[0].state == "done"
    for a, b, c in zip(whole, paths, paths2, strict=True):
        for resumed in (history(b), history(c)):
            assert_rows_close(resumed, history(a.run_dir))
            for key in ("train/loss", "val/loss"):
                got, want = ([row[key] for row in rows] for rows in (resumed, history(a.run_dir)))
                assert got == pytest.approx(want, rel=0, abs=1e-5), key
