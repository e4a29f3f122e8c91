"""The one trainer on a GPU (skipped without one; run on the device by `make test-gpu`): the
step replayed as a CUDA graph computes exactly what the eager step does, the compiled step what
they do up to its own run-to-run spread, the auto setting switches from one to the other inside
a run, a graphed run resumes exactly, and one worker trains packs of two shapes one after
another.

What the steps differ by (bench/graph_vs_compiled.py, 300 steps of the transformer pack of two
on an H100, bench/results/graph_vs_compiled_h100.json): the graphed eager step is bitwise the
eager step, and the eager step is bitwise the same run after run. The compiled step is not: run
twice, it differs from itself from step 3 on (inductor's kernels are not run-to-run
deterministic), up to 1.2e-3 in the loss by step 50 and 5.8e-3 by step 300 (max relative
difference 4.8e-3), and from the eager step by as much (2.2e-3 and 4.0e-3, relative 3.3e-3).
So the compiled step is held to a relative bound a few times that spread, not to an absolute one
(the 2e-3 this test once held broke on an H200); the graph, where a stale buffer or a lost
update would hide, is held to equality.
"""

import contextlib
from collections.abc import Iterator

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
# The compiled step against the eager one, per step's loss: 2x the largest relative difference
# of the compiled step with itself over 300 steps (4.8e-3, H100). A step that computed something
# else (a lost update, another mask) moves the losses by more within a few steps.
COMPILED_RTOL = 1e-2


def configs(*overrides, n=2):
    return [build_config({}, [*SMALL, *member, *overrides]) for member in MEMBERS[:n]]


def run(cfgs, root, **kw):
    steps = []
    paths = [root / c.run_id() for c in cfgs]
    outcomes = execute(cfgs, paths, on_step=lambda _, losses: steps.append(losses.cpu()), **kw)
    return torch.stack(steps) if steps else None, outcomes


@contextlib.contextmanager
def auto_held_until(step: int) -> Iterator[bool]:
    """With train.compile=auto, make the trainer see its compile helper as busy until `step`,
    then wait for it: the pack trains graphed eager to `step`, compiled after (left alone, a
    pack this short ends before the helper does and never switches). Yields whether it could
    (the helper's class as this knows it); where the switch fell is in the run's log."""
    from rhmscale.training.compile_ahead import CompileAhead

    original = getattr(CompileAhead, "ready", None)
    if step <= 0 or original is None:
        yield False
        return

    def ready(self) -> bool | None:
        calls = self.__dict__.get("_held_calls", 0) + 1  # the trainer asks after each step
        self.__dict__["_held_calls"] = calls
        if calls < step:
            return None
        self.process.wait()
        return original(self)

    CompileAhead.ready = ready
    try:
        yield True
    finally:
        CompileAhead.ready = original


@pytest.mark.parametrize(("arch", "n"), [("transformer", 1), ("transformer", 2), ("tree_unet", 2)])
def test_the_graphed_step_is_the_eager_step_and_the_compiled_step_close(tmp_path, arch, n):
    torch._dynamo.reset()
    eager, _ = run(configs(f"model.arch={arch}", "train.compile=off", n=n), tmp_path / "e")
    graphed, outcomes = run(
        configs(f"model.arch={arch}", "train.compile=graph", n=n), tmp_path / "g"
    )
    assert [o.state for o in outcomes] == ["done"] * n
    assert graphed.shape == (40, n)
    assert torch.equal(graphed, eager), (graphed - eager).abs().max()
    assert graphed[-1].mean() < graphed[:5].mean()  # it trains
    compiled, _ = run(configs(f"model.arch={arch}", "train.compile=default", n=n), tmp_path / "c")
    torch.testing.assert_close(compiled, eager, rtol=COMPILED_RTOL, atol=0)


def test_auto_trains_graphed_then_compiled_within_a_run(tmp_path):
    """The default setting's switch, held to fall at step 10 of 40: the steps before it are
    the graphed eager step's, bitwise; after it the compiled step's, within its spread."""
    torch._dynamo.reset()
    cfgs = configs("model.arch=transformer")
    graphed, _ = run(configs("model.arch=transformer", "train.compile=graph"), tmp_path / "g")
    with auto_held_until(10) as held:
        auto, outcomes = run(cfgs, tmp_path / "a")
    assert held and [o.state for o in outcomes] == ["done"] * 2
    log = (tmp_path / "a" / cfgs[0].run_id() / "run.log").read_text()
    assert "compiled step from step 10" in log, log[-2000:]
    assert torch.equal(auto[:10], graphed[:10]), (auto[:10] - graphed[:10]).abs().max()
    torch.testing.assert_close(auto, graphed, rtol=COMPILED_RTOL, atol=0)


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
