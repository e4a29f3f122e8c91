"""train.compile auto on a GPU: a pack starts on the eager step while another process compiles
it (training/compile_ahead.py), then switches. Here on a CPU: the switch with a stand-in helper
(torch.compile on the aot_eager backend, tests/conftest.py), and the real helper process."""

import time

import pytest
import torch

from rhmscale.training.compile_ahead import CompileAhead
from rhmscale.training.step import StepPlan
from tests.test_training import dirs, losses_of, pack_configs


class StandIn:
    """A helper that ends after `polls` polls, successfully or not."""

    def __init__(self, polls: int, ok: bool) -> None:
        self.polls, self.ok, self.seconds = polls, ok, 1.0

    def ready(self):
        self.polls -= 1
        return None if self.polls > 0 else self.ok

    def close(self, step=None):
        if step is None:
            return "the pack ended before it used a compiled step"
        return f"compiled step from step {step}" if self.ok else "compiling the step failed (x)"


def run_with_helper(tmp_path, monkeypatch, helper):
    monkeypatch.setattr(
        "rhmscale.training.trainer.StepPlan.of",
        classmethod(lambda cls, setting, device: StepPlan("default", False, compile_ahead=True)),
    )
    monkeypatch.setattr("rhmscale.training.trainer.for_pack", lambda configs, slots: helper)
    configs = pack_configs("train.max_steps=20")
    paths = dirs(tmp_path / "ahead", configs)
    losses, outcomes = losses_of(configs, paths)
    assert [o.state for o in outcomes] == ["done"] * 3
    return losses, (paths[0] / "run.log").read_text()


@pytest.mark.slow
def test_a_pack_switches_to_the_compiled_step_and_follows_the_eager_one(
    tmp_path, monkeypatch, aot_eager
):
    configs = pack_configs("train.max_steps=20", "train.compile=off")
    eager, _ = losses_of(configs, dirs(tmp_path / "eager", configs))
    switched, log = run_with_helper(tmp_path, monkeypatch, StandIn(polls=6, ok=True))
    assert "compiled step from step 6" in log
    torch.testing.assert_close(switched, eager, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_a_failed_compilation_leaves_the_pack_on_the_eager_step(tmp_path, monkeypatch, aot_eager):
    compiled = []
    monkeypatch.setattr(
        "rhmscale.training.step.TrainStep.use_compiled", lambda self: compiled.append(self)
    )
    _, log = run_with_helper(tmp_path, monkeypatch, StandIn(polls=3, ok=False))
    assert "compiling the step failed" in log and not compiled


@pytest.mark.slow
def test_the_helper_process_compiles_a_pack_and_ends():
    configs = pack_configs("train.compile=auto")
    helper = CompileAhead(configs, len(configs))
    deadline = time.monotonic() + 600
    while helper.ready() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    tail = helper.tail()
    assert helper.ready(), tail
    assert helper.close(step=7).startswith("compiled step from step 7")


def test_a_pack_that_ends_first_stops_its_helper():
    helper = CompileAhead(pack_configs(), 3)
    assert helper.ready() is None  # it has only begun to import
    assert "ended before" in helper.close()
    assert helper.process.poll() is not None  # stopped, not left running
