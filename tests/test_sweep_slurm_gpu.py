"""GPU sweeps on the real dev SLURM cluster, whose first node declares GPUs (slurm/dev-cluster.sh
start --gpus 1: one GPU of 4 shards on node1, a placeholder device node; the test session
restarts the cluster so when it runs otherwise: tests/slurm_cluster.py). The runs train
on the CPU, but SLURM schedules, limits and binds them as GPU jobs: what is checked here is the
sbatch request, the scheduling it gets and the CUDA_VISIBLE_DEVICES each task sees.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from rhmscale.store.folders import SweepDir
from rhmscale.sweeps.dispatch import submit, wait
from rhmscale.sweeps.executors import sbatch_lines
from rhmscale.sweeps.slurm_checks import partition_gres
from tests.test_sweep_slurm import BASE, make_spec, scontrol

pytestmark = pytest.mark.slurm

# Long enough (a few seconds a task) that tasks allowed to run together do overlap.
LONGER = BASE | {"train": BASE["train"] | {"max_steps": 300, "checkpoint_every": 300}}


@pytest.fixture(scope="module")
def shards_per_gpu(slurm_cluster) -> int:
    """The dev node's shards per GPU; one node must declare exactly one GPU (the others none)."""
    (gres,) = [kind for kind in partition_gres("debug") or [] if kind] or [{}]
    if gres.get("gpu") != 1 or not gres.get("shard"):
        pytest.fail(
            f"the dev cluster's node has {gres or 'no GRES'}, these tests need one GPU with "
            "shards, as tests/slurm_cluster.py starts it (TEST_SETTINGS)",
            pytrace=False,
        )
    return gres["shard"]


def task_times(submission) -> list[tuple[datetime, datetime]]:
    """(start, end) of each task, from SLURM (finished jobs stay in scontrol for MinJobAge)."""
    times = []
    for job in submission.jobs:
        info = scontrol("show", "job", str(job.job_id)).stdout
        start, end = (re.search(rf"{key}=(\S+)", info).group(1) for key in ("StartTime", "EndTime"))
        times.append((datetime.fromisoformat(start), datetime.fromisoformat(end)))
    return sorted(times)


def submitted_sbatch_lines(sweep: Path) -> list[str]:
    (script,) = (sweep / "submitit").glob("*_submission.sh")
    return [line for line in script.read_text().splitlines() if line.startswith("#SBATCH")]


def device_lines(sweep: Path) -> list[str]:
    return [
        line.split(": ", 1)[1]
        for log in sorted(sweep.glob("runs/*/run.log"))
        for line in log.read_text().splitlines()
        if ": device " in line
    ]


def test_one_gpu_runs_one_gpu_task_at_a_time_and_each_sees_its_gpu(shards_per_gpu, tmp_path):
    spec = make_spec("gpu", {"seed": [0, 1, 2]}, base=LONGER, gpus_per_task=1, array_parallelism=3)
    submission = submit(spec, tmp_path)
    assert not wait(submission)
    sweep = tmp_path / "gpu"
    # What was handed to sbatch is what `sweep plan` shows.
    lines = submitted_sbatch_lines(sweep)
    assert lines == sbatch_lines(spec.executor, SweepDir(sweep).submitit, "gpu", 3)
    assert "#SBATCH --gpus-per-task=1" in lines
    # Two CPUs would run two at once: the one GPU runs them one after another.
    times = task_times(submission)
    assert all(prev_end <= start for (_, prev_end), (start, _) in itertools.pairwise(times))
    notes = device_lines(sweep)
    assert len(notes) == 3 and all("CUDA_VISIBLE_DEVICES=0 SLURM_JOB_ID=" in n for n in notes)


def test_tasks_share_the_gpu_through_shards(shards_per_gpu, tmp_path):
    spec = make_spec(
        "shared",
        {"seed": [0, 1]},
        base=LONGER,
        gpus_per_task=1,
        tasks_per_gpu=shards_per_gpu,
        shards_per_gpu=shards_per_gpu,
    )
    submission = submit(spec, tmp_path)
    assert not wait(submission)
    sweep = tmp_path / "shared"
    lines = submitted_sbatch_lines(sweep)
    assert "#SBATCH --gres=shard:1" in lines and not any("gpus" in line for line in lines)
    (first, second) = task_times(submission)
    assert second[0] < first[1], "the two shard tasks should have run at the same time"
    notes = device_lines(sweep)
    assert len(notes) == 2 and all("CUDA_VISIBLE_DEVICES=0 " in n for n in notes)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--gpus-per-task", "2"], "executor.gpus_per_task=2, but the nodes of partition debug"),
        (
            ["--gpus-per-task", "1", "--tasks-per-gpu", "2", "--shards-per-gpu", "8"],
            "executor.shards_per_gpu=8, but the nodes of partition debug give each GPU",
        ),
        (["--gpus-per-task", "0", "--gpu-type", "h100"], "executor.gpu_type"),
        (
            ["--gpus-per-task", "1", "--gpu-type", "h100"],
            "executor.gpu_type=h100, but the GPUs of partition debug are untyped",
        ),
    ],
)
def test_gpus_the_partition_cannot_give_exit_2_before_anything_is_submitted(
    shards_per_gpu, tmp_path, options, message
):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: bad\n"
        "base: {grammar: {v: 4, m: 2, L: 2}, data: {P: 8, n_test: 4}, train: {device: cpu}}\n"
        "grid: {seed: [0, 1]}\n"
        "executor: {kind: slurm, partition: debug}\n"
    )
    rhmscale = str(Path(sys.executable).with_name("rhmscale"))
    out = subprocess.run(
        [rhmscale, "sweep", "submit", str(spec), "--root", str(tmp_path / "runs"), *options],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in " ".join(out.stderr.split())
    assert not list((tmp_path / "runs").glob("bad/runs/*")), "no run folder for a refused sweep"
    assert not (tmp_path / "runs" / "bad" / "jobs.jsonl").exists()
    queued = subprocess.run(["squeue", "-h", "-n", "rhm-bad"], capture_output=True, text=True)
    assert queued.returncode == 0 and not queued.stdout.strip()
