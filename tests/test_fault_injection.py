"""Faults on the real dev SLURM cluster: a sweep of 24 tiny runs whose tasks are SIGKILLed,
requeued and cancelled at random times, and whose files are damaged between submissions. After
resubmitting until nothing is left, every run is done, once (one folder per run id), with the
metrics of an undisturbed run of its config."""

from __future__ import annotations

import random
import subprocess
import time
from collections import Counter

import pandas as pd
import pytest
import torch

from rhmscale.store.folders import RunDir
from rhmscale.sweeps.dispatch import submit
from rhmscale.sweeps.grid import expand_points
from rhmscale.sweeps.status import sweep_status
from rhmscale.training import execute
from tests.test_sweep_slurm import BASE, make_spec, scontrol, wait_until

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

FAULTS = ("kill", "requeue", "cancel")


def metrics(path) -> list[dict]:
    rows = pd.read_parquet(RunDir(path).metrics).to_dict("records")
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]


def running_tasks(array_ids: set[str]) -> list[str]:
    out = subprocess.run(
        ["squeue", "-h", "-r", "-t", "RUNNING", "-o", "%i"],
        capture_output=True, text=True, timeout=30, check=False,
    ).stdout  # fmt: skip
    return [job for job in out.split() if job.split("_")[0] in array_ids]


def inject(task: str, fault: str) -> None:
    if fault == "kill":
        subprocess.run(["scancel", "--signal=KILL", task], capture_output=True, check=False)
    elif fault == "cancel":
        subprocess.run(["scancel", task], capture_output=True, check=False)
    else:  # requeue, and let it start again at once (SLURM would hold it ~2 minutes)
        scontrol("requeue", task)
        scontrol("update", f"JobId={task}", "StartTime=now")


def damage(sweep, rng: random.Random, counts: Counter) -> None:
    """Between submissions: cut a finished run's result or metrics short, or an interrupted
    run's newest checkpoint."""
    runs = [RunDir(p) for p in sorted((sweep / "runs").iterdir())]
    done = [r for r in runs if r.state() == "done"]
    interrupted = [r for r in runs if r.state() == "interrupted"]
    for run in rng.sample(done, min(2, len(done))):
        target = rng.choice([run.result, run.metrics])
        target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
        counts[f"damaged {target.name}"] += 1
    for run in rng.sample(interrupted, min(1, len(interrupted))):
        # the newest whole checkpoint: last.ckpt, or prev.ckpt alone if the kill came mid-write
        newest = run.resumable_checkpoints()[0]
        newest.write_bytes(newest.read_bytes()[:2000])
        counts[f"damaged {newest.name}"] += 1


def test_faults_leave_every_run_done_once_with_undisturbed_metrics(slurm_cluster, tmp_path):
    rng = random.Random(2026)
    base = {**BASE, "train": {**BASE["train"], "max_steps": 60}, "eval": {"n_evals": 3}}
    grid = {"data.P": [8, 12, 16, 20], "seed": [0, 1, 2], "grammar.seed": [0, 1]}
    spec = make_spec("faults", grid, base, runs_per_task=2, array_parallelism=4)
    points = expand_points(spec).points
    assert len(points) == 24
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tasks train (cpus_per_task 1): sums in the same order
    try:
        reference = {
            p.run_id: metrics(execute([p.config], [tmp_path / "ref" / p.run_id])[0].run_dir)
            for p in points
        }
    finally:
        torch.set_num_threads(threads)
    sweep, counts = tmp_path / "faults", Counter()
    for round_ in range(8):
        submission = submit(spec, tmp_path)
        if submission.record is None:
            break
        arrays = {str(job.job_id).split("_")[0] for job in submission.jobs}
        if round_ < 3:  # faults at random times while tasks run
            for _ in range(3):
                time.sleep(rng.uniform(1, 4))
                tasks = running_tasks(arrays)
                # each running task with probability 1/2 and at least one: faults in every pass
                for task in [t for t in tasks if rng.random() < 0.5] or tasks[:1]:
                    fault = rng.choice(FAULTS)
                    inject(task, fault)
                    counts[fault] += 1
        wait_until(lambda a=arrays: not running_tasks(a) and not queued(a), 300, "tasks to end")
        if round_ < 3:
            damage(sweep, rng, counts)
    status = sweep_status(sweep, spec)
    assert status.counts == {"done": 24}, status.counts
    assert sorted(p.name for p in (sweep / "runs").iterdir()) == sorted(reference)
    for run_id, expected in reference.items():
        assert metrics(sweep / "runs" / run_id) == expected, run_id
    disturbed = sum(counts[f] for f in FAULTS) + sum(v for k, v in counts.items() if "damaged" in k)
    print(f"faults injected: {dict(counts)}; {disturbed} in all; runs done 24 of 24, lost 0")
    assert counts["kill"] + counts["requeue"] + counts["cancel"] >= 3


def queued(arrays: set[str]) -> list[str]:
    out = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    return [job for job in out.split() if job.split("_")[0] in arrays]
