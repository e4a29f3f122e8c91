"""The one trainer on a GPU (skipped without one; run on the device): the step replayed as a CUDA
graph computes what the compiled step computes, resumes exactly, and one worker trains packs of
two shapes one after another."""

import pytest
import torch

from rhmscale.config_io import build_config
from rhmscale.training import execute

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SMALL = [
    "grammar.v=8",
    "grammar.m=2",
    "grammar.L=4",
    "model.width=64",
    "model.depth=2",
    "train.batch_size=64",
    "train.warmup_steps=10",
    "train.max_steps=40",
    "train.checkpoint_every=1000",
    "eval.n_samples=64",
    "eval.n_evals=2",
    "data.n_test=64",
    "tracking.wandb=disabled",
]
MEMBERS = [["data.P=64", "seed=0"], ["data.P=300", "seed=3", "train.grad_clip=0.05"]]


def configs(*overrides, n=2):
    return [build_config({}, [*SMALL, *member, *overrides]) for member in MEMBERS[:n]]


def run(cfgs, root, **kw):
    steps = []
    paths = [root / c.run_id() for c in cfgs]
    outcomes = execute(cfgs, paths, on_step=lambda _, losses: steps.append(losses.cpu()), **kw)
    return torch.stack(steps) if steps else None, outcomes


@pytest.mark.parametrize(("arch", "n"), [("transformer", 1), ("transformer", 2), ("tree_unet", 2)])
def test_the_graphed_step_computes_what_the_compiled_step_does(tmp_path, arch, n):
    torch._dynamo.reset()
    compiled, _ = run(configs(f"model.arch={arch}", "train.compile=default", n=n), tmp_path / "c")
    graphed, outcomes = run(
        configs(f"model.arch={arch}", "train.compile=auto", n=n), tmp_path / "g"
    )
    assert [o.state for o in outcomes] == ["done"] * n
    assert graphed.shape == (40, n)
    # Not bitwise for the transformer: inside a capture cuBLAS may pick other matmul kernels
    # (seen on an H200: equal for 3 warm-up steps, then up to 5e-4 apart after 40 steps of
    # bf16 training; the tree U-Net was bitwise equal). A stale buffer or a lost update would
    # put the curves far apart.
    torch.testing.assert_close(graphed, compiled, rtol=0, atol=2e-3)
    assert graphed[-1].mean() < graphed[:5].mean()  # it trains


def test_a_graphed_run_resumes_as_if_uninterrupted(tmp_path):
    torch._dynamo.reset()
    cfgs = configs("model.arch=tree_unet", "train.compile=auto", "train.checkpoint_every=10")
    whole, _ = run(cfgs, tmp_path / "whole")
    first, outcomes = run(cfgs, tmp_path / "split", stop_at_step=20)
    assert [o.state for o in outcomes] == ["interrupted"] * 2
    second, outcomes = run(cfgs, tmp_path / "split")
    assert [o.state for o in outcomes] == ["done"] * 2
    resumed = torch.cat([first, second])
    assert torch.equal(resumed, whole), (resumed - whole).abs().max()


@pytest.mark.parametrize("arch", ["transformer", "tree_unet"])
def test_one_worker_trains_packs_of_two_shapes(tmp_path, arch):
    # Recompiling the step for a second vocabulary used to turn its sizes symbolic, which
    # vmap's batched tensors refuse ("Cannot call sizes() on tensor with symbolic sizes").
    torch._dynamo.reset()
    for v in (4, 8):
        cfgs = configs(f"model.arch={arch}", "train.compile=auto", f"grammar.v={v}")
        _, outcomes = run(cfgs, tmp_path / f"v{v}")
        assert [o.state for o in outcomes] == ["done", "done"], [o.error for o in outcomes]
