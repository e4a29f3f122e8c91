import functools
import os

import pytest
import torch

from tests.slurm_cluster import (
    SESSION_NOTES,
    slurm_cluster,  # noqa: F401  (session fixture)
)


@pytest.fixture(autouse=True)
def _wandb_sandbox(tmp_path_factory, monkeypatch):
    """Keep W&B off the network and out of the home folder in every test."""
    home = tmp_path_factory.getbasetemp() / "wandb-home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    if "WANDB_MODE" not in os.environ:
        monkeypatch.setenv("WANDB_MODE", "offline")


@pytest.fixture
def aot_eager(monkeypatch):
    """torch.compile with the aot_eager backend (tests/test_training.py says why; also used by
    tests/test_per_member_optim.py)."""
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", functools.partial(compile_, backend="aot_eager"))
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def pytest_terminal_summary(terminalreporter):
    """Say what the session did to the dev SLURM cluster (tests/slurm_cluster.py)."""
    for note in SESSION_NOTES:
        terminalreporter.write_line(note, yellow="NOT" in note, bold="NOT" in note)
