"""Sweeps on the real dev SLURM cluster: arrays, failures, cancel, requeue. Tiny CPU runs.

The node has 2 cores and no CPU binding: every task asks for 1 CPU and sets torch's threads
from SLURM_CPUS_PER_TASK; at most 2 array tasks run at once.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rhmscale.config_io import build_config
from rhmscale.store.folders import SweepDir
from rhmscale.sweeps.dispatch import RETRYABLE, prepare, submit, wait
from rhmscale.sweeps.grid import expand_points
from rhmscale.sweeps.spec import parse_spec
from rhmscale.sweeps.status import sweep_status

pytestmark = pytest.mark.slurm

# v=4, m=2, s=2, L=2: 32 distinct sequences of length 4; a run takes a few seconds.
BASE = {
    "grammar": {"v": 4, "m": 2, "L": 2},
    "data": {"P": 8, "n_test": 4},
    "model": {"arch": "tree_unet", "width": 16},
    "train": {
        "max_steps": 20,
        "batch_size": 16,
        "warmup_steps": 0,
        "device": "cpu",
        "checkpoint_every": 10,
    },
    "eval": {"n_samples": 16, "n_evals": 1, "batch_size": 64},
    "tracking": {"wandb": "disabled"},
}
EXECUTOR = {
    "kind": "slurm",
    "partition": "debug",
    "cpus_per_task": 1,
    "array_parallelism": 2,
    "timeout_min": 5,
}


def make_spec(name: str, grid, base=None, **executor):
    return parse_spec(
        {"name": name, "base": base or BASE, "grid": grid, "executor": EXECUTOR | executor}
    )


def wait_until(cond: Callable[[], bool], timeout: float, what: str, interval: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def scontrol(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["scontrol", *args], capture_output=True, text=True, timeout=30, check=False
    )


def wait_for_requeue(job) -> None:
    """Wait until SLURM has requeued the job, then let it start at once (no begin delay)."""

    def requeued() -> bool:
        info = scontrol("show", "job", str(job.job_id)).stdout
        if "Restarts=1" in info or "Restarts=2" in info:
            scontrol("update", f"JobId={job.job_id}", "StartTime=now")
            return True
        return False

    wait_until(requeued, 60, f"job {job.job_id} to be requeued")


def counts(path: Path, spec) -> dict[str, int]:
    return dict(sweep_status(path, spec).counts)


def test_a_six_run_array_completes_and_a_second_submit_submits_nothing(slurm_cluster, tmp_path):
    spec = make_spec("six", {"data.P": [8, 16], "seed": [0, 1, 2]})
    submission = submit(spec, tmp_path)
    assert submission.n_submitted == 6 and len(submission.jobs) == 6
    array_ids = {str(j.job_id).split("_")[0] for j in submission.jobs}
    assert len(array_ids) == 1, "one submission is one job array"
    assert not wait(submission)
    sweep = tmp_path / "six"
    for point in expand_points(spec).points:
        assert (sweep / "runs" / point.run_id / "result.json").exists()
    assert counts(sweep, spec) == {"done": 6}
    again = submit(spec, tmp_path)
    assert again.n_submitted == 0 and again.record is None
    records = [r for r in SweepDir(sweep).read_job_lines() if r["event"] == "submit"]
    assert len(records) == 1 and records[0]["array_id"] in array_ids
    assert (sweep / "sweep.yaml").exists()
    from typer.testing import CliRunner

    from rhmscale.cli import app

    out = CliRunner().invoke(app, ["sweep", "status", str(sweep), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["counts"]["done"] == 6
    table = CliRunner().invoke(app, ["sweep", "status", str(sweep), "--runs"], terminal_width=200)
    assert table.exit_code == 0, table.output
    assert "6 finished runs" in table.output and "acc_l2" in table.output
    for point in expand_points(spec).points:
        assert point.run_id[:8] in table.output


def test_a_failing_run_shows_in_status_while_the_others_finish(slurm_cluster, tmp_path):
    # train.device=cuda on a node without GPUs: the config is valid, the run raises. (The
    # device is bookkeeping, not in the run id: the failing run needs a seed of its own.)
    spec = make_spec("fails", [{"seed": [0, 1]}, {"seed": [2], "train.device": "cuda"}])
    bad = [p.run_id for p in expand_points(spec).points if p.config.train.device == "cuda"]
    submission = submit(spec, tmp_path)
    errors = wait(submission)
    assert len(errors) == 1, errors
    sweep = tmp_path / "fails"
    status = sweep_status(sweep, spec)
    assert status.counts == {"done": 2, "failed": 1}
    failed = [r for r in status.runs if r.state == "failed"]
    assert failed[0].run_id == bad[0] and failed[0].message
    assert json.loads((sweep / "runs" / bad[0] / "failed.json").read_text())["error"]
    # retry resubmits the failed run only (it fails again: still no GPU)
    retry = submit(spec, tmp_path, states=RETRYABLE)
    assert retry.prepared.run_ids == bad and len(retry.jobs) == 1
    assert len(wait(retry)) == 1
    submits = [r for r in SweepDir(sweep).read_job_lines() if r["event"] == "submit"]
    assert [len(r["tasks"]) for r in submits] == [3, 1]
    assert sweep_status(sweep, spec).counts == {"done": 2, "failed": 1}


def test_sbatch_errors_are_shown_and_nothing_is_recorded(slurm_cluster, tmp_path):
    from rhmscale.errors import UserError

    spec = make_spec("nopart", {"seed": [0]}, partition="no_such_partition")
    with pytest.raises(UserError, match="(?i)partition"):
        submit(spec, tmp_path)
    assert not (tmp_path / "nopart" / "jobs.jsonl").exists()
    assert not (tmp_path / "nopart" / "sweep.yaml").exists()


def test_cancel_shows_cancelled_runs_and_retry_takes_only_those(slurm_cluster, tmp_path):
    from rhmscale.sweeps.dispatch import cancel

    slow = {**BASE, "train": {**BASE["train"], "max_steps": 5000, "checkpoint_every": 100}}
    spec = make_spec("cancel", {"seed": [0, 1, 2]}, base=slow, array_parallelism=1)
    submit(spec, tmp_path)
    sweep = tmp_path / "cancel"
    wait_until(lambda: counts(sweep, spec).get("running") == 1, 60, "a running task")
    ids, _ = cancel(sweep)
    assert ids
    wait_until(
        lambda: not ({"running", "queued"} & set(counts(sweep, spec))), 60, "the queue to drain"
    )
    assert counts(sweep, spec) == {"cancelled": 3}
    retry = prepare(spec, tmp_path, states=RETRYABLE)
    assert len(retry.run_ids) == 3
    assert prepare(spec, tmp_path, states={"failed"}).run_ids == []


def test_requeue_resumes_from_the_checkpoint_with_the_same_result(slurm_cluster, tmp_path):
    from rhmscale.training import execute

    longer = {
        **BASE,
        "train": {**BASE["train"], "max_steps": 600, "checkpoint_every": 50},
        "eval": {**BASE["eval"], "n_evals": 3},
        "tracking": {"wandb": "offline"},
    }
    spec = make_spec("requeue", {"seed": [3]}, base=longer)
    (point,) = expand_points(spec).points
    submission = submit(spec, tmp_path)
    (job,) = submission.jobs
    run_dir = tmp_path / "requeue" / "runs" / point.run_id
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    wait_until(ckpt.exists, 120, "a first checkpoint", interval=0.2)
    # What a preemption or a time limit does: USR2 to the job's steps; submitit requeues.
    out = subprocess.run(
        ["scancel", "--signal=USR2", str(job.job_id)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr

    wait_for_requeue(job)
    assert not wait(submission)
    result = json.loads((run_dir / "result.json").read_text())
    logs = "".join(p.read_text() for p in (tmp_path / "requeue" / "submitit").glob("*_log.out"))
    assert "Requeued job" in logs, logs
    run_log = (run_dir / "run.log").read_text()
    assert run_log.count(f"run {point.run_id} on ") == 2
    # The signal made the run checkpoint at its current step and stop, not die mid-interval.
    assert "stopped at a checkpoint" in run_log, run_log
    assert not (run_dir / "failed.json").exists()
    # Same final metrics as an uninterrupted run of the same config.
    import torch

    torch.set_num_threads(1)
    (reference,) = execute([build_config(point.config.model_dump(mode="json"))], [tmp_path / "ref"])
    strip = {"wall_s"}
    assert {k: v for k, v in result["final"].items() if k not in strip} == {
        k: v for k, v in reference.result["final"].items() if k not in strip
    }
    # One W&B run id throughout: every offline run folder carries the run id.
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert offline and all(p.name.endswith(point.run_id) for p in offline)


def test_a_killed_task_shows_interrupted_and_the_next_submit_resumes_it(slurm_cluster, tmp_path):
    # SLURM sends SIGTERM first and SIGKILL KillWait (5 s) later: the run must outlast that.
    longer = {**BASE, "train": {**BASE["train"], "max_steps": 4000, "checkpoint_every": 50}}
    spec = make_spec("killed", {"seed": [4]}, base=longer)
    (point,) = expand_points(spec).points
    (job,) = submit(spec, tmp_path).jobs
    run_dir = tmp_path / "killed" / "runs" / point.run_id
    wait_until((run_dir / "checkpoints" / "last.ckpt").exists, 120, "a checkpoint", interval=0.2)
    out = subprocess.run(
        ["scancel", "--signal=KILL", str(job.job_id)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    sweep = tmp_path / "killed"
    wait_until(lambda: counts(sweep, spec) == {"interrupted": 1}, 60, "the run to be interrupted")
    resumed = submit(spec, tmp_path)
    assert resumed.prepared.run_ids == [point.run_id]
    assert not wait(resumed)
    assert counts(sweep, spec) == {"done": 1}
    assert (run_dir / "run.log").read_text().count(f"run {point.run_id} on ") == 2


def test_a_pack_is_requeued_as_a_whole_and_every_member_resumes(slurm_cluster, tmp_path):
    """pack: true trains the three runs together in one task; USR2 checkpoints all of them,
    submitit requeues the task, and each member ends as an uninterrupted pack ends."""
    from rhmscale.training import execute

    longer = {
        **BASE,
        "train": {**BASE["train"], "max_steps": 600, "checkpoint_every": 50},
        "eval": {**BASE["eval"], "n_evals": 3},
    }
    spec = make_spec("packreq", {"data.P": [8, 16, 24]}, base=longer, pack=True, runs_per_task=3)
    points = expand_points(spec).points
    submission = submit(spec, tmp_path)
    (job,) = submission.jobs  # one pack, one task
    runs = tmp_path / "packreq" / "runs"
    ckpts = [runs / p.run_id / "checkpoints" / "last.ckpt" for p in points]
    wait_until(lambda: all(c.exists() for c in ckpts), 120, "the pack's checkpoints", 0.2)
    out = subprocess.run(
        ["scancel", "--signal=USR2", str(job.job_id)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr

    wait_for_requeue(job)
    assert not wait(submission)
    assert counts(tmp_path / "packreq", spec) == {"done": 3}
    import torch

    torch.set_num_threads(1)
    configs = [build_config(p.config.model_dump(mode="json")) for p in points]
    reference = execute(configs, [tmp_path / "ref" / p.run_id for p in points])
    for point, ref in zip(points, reference, strict=True):
        run_dir = runs / point.run_id
        assert (run_dir / "run.log").read_text().count(f"run {point.run_id} on ") == 2
        assert not (run_dir / "failed.json").exists()
        final = json.loads((run_dir / "result.json").read_text())["final"]
        strip = {"wall_s"}
        assert {k: v for k, v in final.items() if k not in strip} == {
            k: v for k, v in ref.result["final"].items() if k not in strip
        }


def test_a_worker_whose_runs_stop_early_takes_the_queued_runs(slurm_cluster, tmp_path):
    """Four array tasks of three slots, two at a time, ten runs: the first worker's runs (the
    most expensive by their expected steps) stop at their first evaluations, so it takes the
    runs still queued instead of leaving them to the tasks waiting for their turn; every run is
    trained by one worker, once, and the late tasks find nothing and end."""
    import re

    base = {
        **BASE,
        "train": {**BASE["train"], "max_steps": 1500, "checkpoint_every": 500},
        "eval": {**BASE["eval"], "n_evals": 2, "every": 10},
    }
    grid = [  # larger P: more expected steps, taken first; these stop early (patience 1)
        {"data.P": [24, 25, 26], "train.early_stop_patience": [1]},
        {"data.P": [8, 9, 10, 11, 12, 13, 14], "train.early_stop_patience": [1000]},
    ]
    spec = make_spec("early", grid, base=base, pack=True, runs_per_task=3)
    submission = submit(spec, tmp_path)
    assert len(submission.jobs) == 4  # four packs planned (of 2-3 runs): four workers
    assert not wait(submission)
    sweep = tmp_path / "early"
    assert counts(sweep, spec) == {"done": 10}
    by_job: dict[str, list[str]] = {}
    for point in expand_points(spec).points:
        log = (sweep / "runs" / point.run_id / "run.log").read_text()
        jobs = re.findall(rf"run {point.run_id} on \S+ \(job (\S+)\)", log)
        assert len(jobs) == 1, log  # set up once: trained by one worker, once
        by_job.setdefault(jobs[0], []).append(point.run_id)
    assert max(len(ids) for ids in by_job.values()) > 3, by_job  # more than its slots
    lines = SweepDir(sweep).read_job_lines()
    assert sum(line["event"] == "worker-exit" for line in lines) == 4
    assert not list((sweep / "backlog").glob("*.json"))
