"""Issue 20 (points 3 and 6): one message per mistake, one option name per meaning."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RHMSCALE = [str(Path(sys.executable).with_name("rhmscale"))]


def cli(*args, cwd=None, env=None):
    return subprocess.run(
        [*RHMSCALE, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


@pytest.mark.skipif(shutil.which("sbatch") is None, reason="needs sbatch on PATH")
@pytest.mark.parametrize("conf", ["missing", None])
def test_slurm_without_a_configuration_says_what_is_missing(tmp_path, conf):
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    if conf:
        env["SLURM_CONF"] = str(tmp_path / "missing" / "slurm.conf")
    elif Path("/etc/slurm/slurm.conf").is_file():
        pytest.skip("this machine has /etc/slurm/slurm.conf")
    root = tmp_path / "runs"
    result = cli("sweep", "submit", "quick", "--root", str(root), "-e", "slurm", env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no reachable SLURM"), result.stderr
    assert "SLURM_CONF" in lines[0] and "dev-cluster.sh env" in lines[0]
    assert not root.exists() or not any(root.rglob("config.yaml"))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    import numpy as np

    from tests.synthetic_sweep import synthetic_frame, write_run_dirs

    root = tmp_path_factory.mktemp("sweep")
    frame = synthetic_frame(np.random.default_rng(21), cells=[(8, 2), (16, 2), (8, 4)], L=4)
    write_run_dirs(frame, root)
    return root


def all_commands():
    import typer.main

    from rhmscale.cli import app

    def walk(command, path):
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                yield from walk(sub, [*path, name])
        else:
            yield " ".join(path), command

    yield from walk(typer.main.get_command(app), [])


def test_one_option_name_per_meaning():
    """An output file or folder is --output/-o everywhere (tune report's --out stays, hidden)."""
    for name, command in all_commands():
        for param in command.params:
            if "--out" in param.opts:
                assert param.hidden, f"{name}: --out is shown; the name is --output"
            if "--output" in param.opts:
                assert "-o" in param.opts, f"{name}: --output without -o"
    report = dict(all_commands())["tune report"]
    assert any(p.opts == ["--output", "-o"] for p in report.params)


@pytest.mark.parametrize("command", [["report", "SWEEP"], ["run"], ["tune", "report", "SWEEP"]])
def test_a_bad_wandb_mode_is_blamed_on_the_option(tmp_path, sweep, command):
    args = [str(sweep) if a == "SWEEP" else a for a in command]
    result = cli(*args, "--wandb", "bogus", "--root" if args == ["run"] else "-o", str(tmp_path))
    assert result.returncode == 2, result.stderr
    assert "'--wandb'" in result.stderr and "bogus" in result.stderr
    assert "tracking.wandb" not in result.stderr and "config" not in result.stderr


@pytest.mark.parametrize("levels", ["5", "2-5"])
def test_levels_beyond_the_grammar_say_no_such_level(sweep, levels):
    result = cli("fit", str(sweep), "--levels", levels, "--n-boot", "50")
    assert result.returncode == 2, result.stderr
    assert f"--levels {levels}: no such level" in result.stderr and "L = 4" in result.stderr
    assert "data.P" not in result.stderr
