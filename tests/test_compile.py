"""Compiled training steps (what runs and packs do on GPUs) follow the eager ones.

Inductor needs a C++ compiler and minutes on a CPU, so torch.compile is pointed at the
aot_eager backend here: Dynamo still traces our step (vmap, functional_call, the per-member
clipping) and AOTAutograd still builds its backward, which is where tracing goes wrong."""

import functools

import pytest
import torch

from rhmscale.rhm.data import make_datasets
from rhmscale.store.folders import RunDir
from rhmscale.training.packed import Member, PackTrainer
from rhmscale.training.train import train
from tests.test_packed import LossRecorder, pack_configs


@pytest.fixture
def aot_eager(monkeypatch):
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", functools.partial(compile_, backend="aot_eager"))
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def lone_losses(cfg, folder, compile):
    recorder = LossRecorder()
    train(cfg, make_datasets(cfg), RunDir(folder), callbacks=[recorder], compile=compile)
    return torch.stack(recorder.losses)


@pytest.mark.slow
def test_a_compiled_lone_run_follows_the_eager_one(tmp_path, aot_eager):
    (cfg,) = pack_configs("train.max_steps=20", "train.checkpoint_every=1000", n=1)
    eager = lone_losses(cfg, tmp_path / "eager", False)
    compiled = lone_losses(cfg, tmp_path / "compiled", True)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["transformer", "tree_unet"])
def test_a_compiled_pack_follows_the_eager_one(tmp_path, aot_eager, arch):
    configs = pack_configs(
        f"model.arch={arch}", "train.max_steps=20", "train.checkpoint_every=1000"
    )
    trajectories = []
    for compile in (False, True):
        members = [
            Member(cfg, make_datasets(cfg), RunDir(tmp_path / f"{compile}{i}"))
            for i, cfg in enumerate(configs)
        ]
        losses: list[torch.Tensor] = []
        PackTrainer(members, compile=compile, on_step=lambda _, x, out=losses: out.append(x)).fit()
        trajectories.append(torch.stack(losses))
    torch.testing.assert_close(trajectories[1], trajectories[0], rtol=0, atol=1e-5)
