"""A W&B problem costs the mirror, never the run (issue 19, point 3): WANDB_* variables that wandb
refuses, a W&B run that cannot start even offline, logging that fails mid-run. Under `auto` the
run trains on with one warning line in its log; `online` and `offline` exit 2 before training,
naming the variable to fix."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rhmscale.config_io import build_config
from rhmscale.errors import UserError
from rhmscale.store import wandb_mirror
from rhmscale.store.folders import RunDir
from rhmscale.training import execute

RHMSCALE = str(Path(sys.executable).with_name("rhmscale"))
TINY = [
    *("grammar.L=2", "grammar.v=4", "grammar.m=2", "data.P=8", "data.n_test=4"),
    *("train.max_steps=10", "model.arch=tree_unet", "model.width=16", "eval.n_samples=16"),
    *("eval.n_evals=2", "train.device=cpu"),
]
REFUSED = [
    ("WANDB_MODE", ""),
    ("WANDB_MODE", "garbage"),
    ("WANDB_SILENT", "maybe"),
    ("WANDB_CONSOLE", "garbage"),
    ("WANDB_INIT_TIMEOUT", "abc"),
    ("WANDB_BASE_URL", "not a url"),
    ("WANDB_BASE_URL", "http://[::1"),
    ("WANDB_BASE_URL", "ftp://example.com"),
]


def run_auto(path):
    (outcome,) = execute([build_config({}, [*TINY, "tracking.wandb=auto"])], [path])
    return outcome


def wandb_warnings(path):
    return [line for line in RunDir(path).log.read_text().splitlines() if "W&B" in line]


@pytest.mark.parametrize(("name", "value"), REFUSED)
def test_auto_logs_offline_past_a_variable_wandb_refuses(tmp_path, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    outcome = run_auto(tmp_path)
    assert outcome.state == "done", RunDir(tmp_path).log.read_text()
    (warning,) = wandb_warnings(tmp_path)
    assert "WARNING" in warning and f"{name}={value!r} is not valid" in warning
    assert "logging offline" in warning and "wandb sync" in warning
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    assert os.environ[name] == value  # hidden from wandb only while it was called


@pytest.mark.parametrize("mode", ["online", "offline"])
@pytest.mark.parametrize(("name", "value"), REFUSED[1:4] + REFUSED[6:7])
def test_online_or_offline_with_a_variable_wandb_refuses_is_a_user_error(
    monkeypatch, mode, name, value
):
    monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match=f"tracking.wandb={mode}: {name}=.*fix or unset {name}"):
        wandb_mirror.choose_mode(mode)


def test_auto_trains_without_wandb_when_even_offline_fails(tmp_path, monkeypatch):
    def refuse(*args):
        raise RuntimeError("no room for wandb")

    monkeypatch.setattr(wandb_mirror, "_init", refuse)
    assert run_auto(tmp_path).state == "done"
    (warning,) = wandb_warnings(tmp_path)
    assert "could not start offline (no room for wandb)" in warning
    assert "the run goes on without W&B" in warning


class _FailingRun:
    """A W&B run whose logging fails (a full disk, a dead wandb service)."""

    summary: dict = {}

    def define_metric(self, *args, **kw):
        pass

    def log(self, *args, **kw):
        raise OSError("wandb service is gone")

    def finish(self, *args, **kw):
        raise OSError("wandb service is gone")


def test_auto_trains_on_when_logging_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(wandb_mirror, "_init", lambda *args: _FailingRun())
    outcome = run_auto(tmp_path)
    assert outcome.state == "done" and RunDir(tmp_path).result.exists()
    (warning,) = wandb_warnings(tmp_path)  # once, not at every log call, nor at finish
    assert "logging failed (wandb service is gone)" in warning


# --- at the command line ----------------------------------------------------------------------


def cli_env(tmp_path, **wandb):
    """No WANDB_MODE (conftest's offline would settle `auto`), a key, no home .netrc."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    return env | {"HOME": str(tmp_path), "WANDB_API_KEY": "0123456789abcdef" * 2 + "0" * 8} | wandb


def cli_run(tmp_path, mode, env):
    return subprocess.run(
        [RHMSCALE, "run", *[a for o in TINY for a in ("--set", o)], "--root", str(tmp_path / "r"),
         "--wandb", mode, "--no-progress"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip


@pytest.mark.slow
def test_a_malformed_base_url_under_auto_is_one_warning_and_no_traceback(tmp_path):
    result = cli_run(tmp_path, "auto", cli_env(tmp_path, WANDB_BASE_URL="http://[::1"))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Exception" not in result.stderr, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "W&B" in line]
    assert len(warnings) == 1 and "WANDB_BASE_URL='http://[::1'" in warnings[0], result.stderr
    (run,) = (tmp_path / "r" / "adhoc" / "runs").iterdir()
    assert json.loads((run / "result.json").read_text())["final"]["step"] == 10


def test_online_with_a_variable_wandb_refuses_exits_2_naming_it(tmp_path):
    result = cli_run(tmp_path, "online", cli_env(tmp_path, WANDB_CONSOLE="garbage"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert "WANDB_CONSOLE='garbage' is not valid" in result.stderr
    assert not (tmp_path / "r").exists()  # nothing trained, nothing written


def test_a_sweep_under_online_or_offline_with_a_bad_variable_is_refused_at_submission(
    tmp_path, monkeypatch
):
    from rhmscale.errors import UserError
    from rhmscale.sweeps.dispatch import submit
    from rhmscale.sweeps.spec import parse_spec

    monkeypatch.setenv("WANDB_CONSOLE", "garbage")
    tree = {
        "name": "wb",
        "base": {"grammar": {"v": 4, "m": 2, "L": 2}, "data": {"P": 8, "n_test": 4}},
        "grid": {"seed": [0]},
        "executor": {"kind": "debug"},
        "tracking": {"wandb": "offline"},
    }
    with pytest.raises(UserError, match="WANDB_CONSOLE='garbage' is not valid"):
        submit(parse_spec(tree), tmp_path)
    assert not (tmp_path / "wb").exists()
