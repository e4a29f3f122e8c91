"""A stop request is obeyed everywhere (issue 31, rule 3): SIGTERM or Ctrl-C during a long
evaluation batch, in commands that do not train (collect, fit), and to the whole process group
of a local `sweep submit` or `tune submit` (as Ctrl-C at a terminal sends it): the command ends
within seconds, one line and the exit status of an interrupted command, no traceback, the runs
checkpointed and resumable."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rhmscale.store.folders import RunDir, SweepDir

RHMSCALE = str(Path(sys.executable).with_name("rhmscale"))
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal, as a shell reports it
BASE = {
    "grammar": {"L": 2, "v": 4, "m": 2},
    "data": {"P": 8, "n_test": 4},
    "model": {"arch": "tree_unet", "width": 16},
    "train": {"max_steps": 200000, "device": "cpu", "checkpoint_every": 50},
    "eval": {"n_samples": 16, "n_evals": 2},
}


def start(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    """`rhmscale ARGS` in a session of its own (a terminal's process group), its output to a
    file (workers it starts inherit its descriptors: a pipe would stay open after it ends)."""
    log = tmp_path / f"out-{time.monotonic_ns()}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [RHMSCALE, *args], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return process, log


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.2)


def training(folder: Path, n: int) -> bool:
    """n runs of the folder have trained to their first checkpoint."""
    return len(list(folder.glob("runs/*/checkpoints/last.ckpt"))) >= n


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def ctrl_c(process: subprocess.Popen, timeout: float = 90) -> float:
    """SIGINT to the process's whole group, as Ctrl-C at its terminal; seconds until it ended."""
    sent = time.perf_counter()
    os.killpg(process.pid, signal.SIGINT)
    process.wait(timeout=timeout)
    return time.perf_counter() - sent


# --- Ctrl-C to a local submission -------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_to_a_local_sweep_submit_checkpoints_its_runs_and_says_how_to_go_on(tmp_path):
    """Before: four submitit KeyboardInterrupt tracebacks (the workers' controllers and the
    command), exit 1, workers SIGKILLed a second after their controller died."""
    spec = {"name": "long", "base": BASE, "grid": {"seed": [0, 1]},
            "executor": {"kind": "local", "runs_per_task": 1},
            "tracking": {"wandb": "disabled"}}  # fmt: skip
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(spec))
    process, log = start(tmp_path, "sweep", "submit", str(tmp_path / "long.yaml"), "--root",
                         str(tmp_path / "runs"))  # fmt: skip
    folder = tmp_path / "runs" / "long"
    try:
        wait_until(lambda: training(folder, 2), 120, "checkpoint of both runs")
        took = ctrl_c(process)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    out = log.read_text()
    assert process.returncode == 130, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert "go on with: rhmscale sweep submit" in out, out
    assert took < 60
    sweep = SweepDir(folder)
    workers = [int(t["job_id"]) for r in sweep.read_job_lines() for t in r.get("tasks", [])]
    assert workers and not any(alive(pid) for pid in workers)
    states = [RunDir(path).state() for path in sweep.runs.iterdir()]
    assert states == ["interrupted", "interrupted"]
