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
