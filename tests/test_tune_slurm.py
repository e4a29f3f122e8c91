"""Tuning on the real dev SLURM cluster: workers share a study through its journal; every trial
is recorded once, in the journal and in its run folder; a killed worker's trial is resumed, not
lost or run twice; a hopeless trial is pruned; the journal reloads in a fresh process."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from rhmscale.store.folders import RunDir
from rhmscale.tuning.dispatch import retry, submit
from rhmscale.tuning.spec import parse_study_spec
from rhmscale.tuning.study import storage
from tests.test_sweep_slurm import BASE, EXECUTOR, wait_for_requeue, wait_until

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SEARCH = {
    "train.lr": {"float": [1.0e-3, 3.0e-2], "log": True},
    "train.warmup_steps": {"int": [0, 10], "step": 5},
}


def study_spec(name: str, **fields):
    tree = {
        "name": name,
        "base": BASE,
        "search": SEARCH,
        "objective": {"metric": "val/loss", "direction": "minimize"},
        "executor": EXECUTOR,
        "pruner": {"kind": "none"},
    }
    return parse_study_spec(tree | fields)


def queued(array_ids: set[str]) -> bool:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True)
    return any(job.split("_")[0] in array_ids for job in out.stdout.split())


def finish(submitted) -> None:
    arrays = {str(job.job_id).split("_")[0] for job in submitted.jobs}
    wait_until(lambda: not queued(arrays), 300, "the workers to end")


def trials_of(folder: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage(folder)).get_trials()


def test_two_workers_spend_the_budget_with_every_trial_recorded_once(slurm_cluster, tmp_path):
    spec = study_spec("two", workers=2, budget={"trials": 6})
    submitted = submit(spec, tmp_path)
    assert len(submitted.jobs) == 2
    finish(submitted)
    folder = tmp_path / "two"
    trials = trials_of(folder, "two")
    assert len(trials) == 6 and {t.state.name for t in trials} == {"COMPLETE"}
    assert len({t.datetime_start for t in trials}) == 6
    for t in trials:  # its run folder is done and says which trial it answered
        run = folder / "runs" / t.user_attrs["run_id"]
        assert RunDir(run).state() == "done"
        numbers = [e["number"] for e in json.loads((run / "trial.json").read_text())["trials"]]
        assert t.number in numbers
        config = json.loads((run / "config.json").read_text())["config"]
        assert config["train"]["lr"] == t.params["train.lr"]
        assert config["tracking"]["job_type"] == "trial"
        assert config["tracking"]["trial"]["number"] in numbers
    recorded = [
        n
        for run in (folder / "runs").iterdir()
        for n in (e["number"] for e in json.loads((run / "trial.json").read_text())["trials"])
    ]
    assert sorted(recorded) == list(range(6))  # each trial in one run folder, once
    # The journal reloads in a fresh process (as optuna-dashboard would open it).
    script = (
        "import optuna, sys; from optuna.storages.journal import JournalFileBackend; "
        "s = optuna.storages.JournalStorage(JournalFileBackend(sys.argv[1])); "
        "print(len(optuna.load_study(study_name='two', storage=s).trials))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(folder / "journal.log")], capture_output=True, text=True
    )
    assert out.stdout.strip() == "6", out.stderr
    again = submit(spec, tmp_path)  # budget spent: the workers end at once
    finish(again)
    assert len(trials_of(folder, "two")) == 6


def test_a_killed_workers_trial_is_resumed_not_lost_or_repeated(slurm_cluster, tmp_path):
    base = {**BASE, "train": {**BASE["train"], "max_steps": 400, "checkpoint_every": 20}}
    spec = study_spec("kill", base=base, workers=1, budget={"trials": 2})
    submitted = submit(spec, tmp_path)
    folder = tmp_path / "kill"

    # the trial records its worker in the journal before its run trains
    wait_until(lambda: any(folder.glob("runs/*/checkpoints/last.ckpt")), 120, "a checkpoint")
    subprocess.run(["scancel", "--signal=KILL", str(submitted.jobs[0].job_id)], check=True)
    finish(submitted)
    (first,) = trials_of(folder, "kill")
    assert first.state.name == "RUNNING"  # the worker died with it
    resumed = retry(folder)
    finish(resumed)
    trials = trials_of(folder, "kill")
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    run = folder / "runs" / trials[0].user_attrs["run_id"]
    log = (run / "run.log").read_text()
    assert "training 1 run(s) from step 0" in log
    assert re.search(r"from step [1-9]\d* ", log)  # resumed from its checkpoint, not restarted
    assert trials[0].params == first.params


def test_a_hopeless_trial_is_pruned_before_its_last_evaluation(slurm_cluster, tmp_path):
    base = {
        **BASE,
        "train": {**BASE["train"], "max_steps": 60},
        "eval": {"n_evals": 1, "every": 10},
    }
    spec = study_spec(
        "prune",
        base=base,
        workers=1,
        budget={"trials": 3},
        search={"train.lr": {"float": [1.0e-7, 3.0e-2], "log": True}},
        enqueue=[{"train.lr": 3.0e-2}, {"train.lr": 2.0e-2}, {"train.lr": 1.0e-7}],
        pruner={"kind": "median", "startup_trials": 2, "warmup_evals": 1},
    )
    finish(submit(spec, tmp_path))
    trials = trials_of(tmp_path / "prune", "prune")
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    hopeless = trials[2]
    result = json.loads(
        (tmp_path / "prune" / "runs" / hopeless.user_attrs["run_id"] / "result.json").read_text()
    )
    assert result["pruned"] and result["final"]["step"] < 60
    assert max(hopeless.intermediate_values) < 5  # stopped at an early evaluation


def test_cancel_stops_the_workers_and_retry_finishes_the_study(slurm_cluster, tmp_path):
    # Long enough that the trial cannot finish between its first checkpoint and the cancel
    # (400 steps did, once, on CI's 2-core machine).
    base = {**BASE, "train": {**BASE["train"], "max_steps": 4000, "checkpoint_every": 50}}
    spec = study_spec("cancel", base=base, workers=1, budget={"trials": 1})
    submitted = submit(spec, tmp_path)
    folder = tmp_path / "cancel"
    wait_until(lambda: any(folder.glob("runs/*/checkpoints/last.ckpt")), 120, "a checkpoint")
    rhmscale = str(Path(sys.executable).with_name("rhmscale"))
    out = subprocess.run([rhmscale, "tune", "cancel", str(folder)], capture_output=True, text=True)
    assert out.returncode == 0 and submitted.jobs[0].job_id.split("_")[0] in out.stdout
    finish(submitted)
    status = subprocess.run(
        [rhmscale, "tune", "status", str(folder), "--json"], capture_output=True, text=True
    )
    (study,) = json.loads(status.stdout)["studies"]
    assert study["counts"] == {"running": 1} and json.loads(status.stdout)["workers"] == {}
    finish(retry(folder))
    (trial,) = trials_of(folder, "cancel")
    assert trial.state.name == "COMPLETE"


def test_a_preempted_worker_requeues_and_its_trial_resumes(slurm_cluster, tmp_path):
    """USR2 (a preemption, a time limit): the trial's run checkpoints, submitit requeues the
    worker, and the requeued worker goes on with the same trial from that checkpoint."""
    base = {**BASE, "train": {**BASE["train"], "max_steps": 600, "checkpoint_every": 50}}
    spec = study_spec("preempt", base=base, workers=1, budget={"trials": 1})
    submitted = submit(spec, tmp_path)
    (job,) = submitted.jobs
    folder = tmp_path / "preempt"
    wait_until(lambda: any(folder.glob("runs/*/checkpoints/last.ckpt")), 120, "a checkpoint")
    out = subprocess.run(["scancel", "--signal=USR2", str(job.job_id)], capture_output=True)
    assert out.returncode == 0, out.stderr
    wait_for_requeue(job)
    finish(submitted)
    (trial,) = trials_of(folder, "preempt")
    assert trial.state.name == "COMPLETE"
    log = (folder / "runs" / trial.user_attrs["run_id"] / "run.log").read_text()
    assert "stopped at a checkpoint" in log and re.search(r"from step [1-9]\d* ", log)
    logs = "".join(p.read_text() for p in (folder / "submitit").glob("*_log.out"))
    assert "Requeued job" in logs
