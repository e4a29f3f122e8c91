"""Faults on the real dev SLURM cluster, for a tuning study: 2 workers training packed trials (2
a pack) are SIGKILLed, killed (scancel), requeued and cancelled at random times; between
resubmissions (`tune retry`) their process records (workers/<i>.json) are cut short or
overwritten with garbage and the journal's last line is torn in half. After resubmitting until
the budget is spent and nothing is queued, every trial has ended (complete, pruned, or failed
with its reason), as many as the budget, each trained in one run folder, resumed from its
checkpoint after every interruption (never from step 0 once it had one), its intermediate
values its run's.

Two faults it met have tests of their own here, without SLURM: a torn last journal line that
the next write glued its entry to, and a resumed run's evaluation reported twice."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import optuna
import pandas as pd
import pytest

from rhmscale.store.folders import RunDir
from rhmscale.tuning.dispatch import retry, submit
from rhmscale.tuning.journal import first_damaged_line
from rhmscale.tuning.liveness import record_path
from rhmscale.tuning.spec import parse_study_spec
from rhmscale.tuning.study import objective_value, storage, study_cells
from rhmscale.tuning.worker import Worker
from tests.test_fault_injection import FAULTS, inject, running_tasks
from tests.test_sweep_slurm import BASE, EXECUTOR, scontrol, wait_until
from tests.test_tune import STUDY
from tests.test_tune_slurm import study_spec

BUDGET = 16
SEED = 2026
WORKERS = 2
FAULT_ROUNDS = 4  # rounds with faults, each followed by damage; then undisturbed ones
MAX_STEPS = 1000  # 3-8 s a pack of 2 on one core; evaluations at 10, 32, 100, 316, 1000
START = re.compile(r"training \d+ run\(s\) from step (\d+) ")
SET_UP = re.compile(r": run \w+ on \S+ in ")  # a worker took the run up (execute's set-up)
# scancel --signal=KILL is a cancel to SLURM (SIGTERM, SIGKILL KillWait later): the worker
# checkpoints and exits. "sigkill" kills the worker's process itself, as the OOM killer would.
STUDY_FAULTS = (*FAULTS, "sigkill")
OP_NAMES = {  # optuna.storages.journal JournalOperation, for the torn line's record
    0: "create study", 1: "delete study", 2: "set study user attr", 3: "set study system attr",
    4: "create trial", 5: "set trial param", 6: "set trial state", 7: "set intermediate value",
    8: "set trial user attr", 9: "set trial system attr",
}  # fmt: skip


def tear_last_line(journal: Path) -> dict:
    """Cut the journal's last line in half, its newline gone (a writer killed mid-line)."""
    text = journal.read_bytes()
    last = text.splitlines(keepends=True)[-1]
    journal.write_bytes(text[: len(text) - len(last)] + last[: len(last) // 2])
    return json.loads(last)


def test_a_torn_last_journal_line_is_dropped_by_the_next_write(tmp_path):
    """Optuna skips a torn last line, but appended the next entry to it: that entry was lost
    (a new trial: an AttributeError inside Optuna) and the journal damaged once another
    line followed. The next write now drops the torn line first."""
    study = optuna.create_study(study_name="torn", storage=storage(tmp_path))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert tear_last_line(tmp_path / "journal.log")["op_code"] == 6  # the second trial's tell
    study = optuna.load_study(study_name="torn", storage=storage(tmp_path))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    trials = optuna.load_study(study_name="torn", storage=storage(tmp_path)).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "RUNNING", "COMPLETE", "COMPLETE"]
    assert first_damaged_line(tmp_path / "journal.log") is None


def test_a_resumed_trial_reports_each_evaluation_once(tmp_path):
    """A run killed after an evaluation and before its next checkpoint: metrics.parquet holds
    a row its checkpoint does not, and the resumed run evaluates that step again. The judge
    counted both (the value reported one evaluation late, the pruner's warm-up shortened)."""
    spec = parse_study_spec(STUDY | {"grid": {"grammar.v": [4]}})
    worker = Worker(tmp_path, spec, 0)
    (cell,) = worker.cells
    trial = worker.study(cell).ask()
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.write_metrics([{"step": 6, "val/loss": 2.0}, {"step": 28, "val/loss": 1.5}])
    judge = worker.judge(cell, [trial], run.path)  # resumed from its checkpoint at step 20
    judge({"step": 28, "val/loss": 1.5})
    judge({"step": 60, "val/loss": 1.25})
    frozen = worker.study(cell).get_trials()[trial.number]
    assert frozen.intermediate_values == {1: 1.5, 2: 1.25}


def fault_study():
    base = {
        **BASE,
        "train": {**BASE["train"], "max_steps": MAX_STEPS, "checkpoint_every": 20},
        "eval": {**BASE["eval"], "n_evals": 5},
    }
    return study_spec(
        "faults",
        base=base,
        workers=WORKERS,
        budget={"trials": BUDGET},
        search={  # width: shared by a pack (its later trials take the first's); lr: per member
            "model.width": {"choices": [16, 24]},
            "train.lr": {"float": [1.0e-3, 3.0e-2], "log": True},
            "train.warmup_steps": {"int": [0, 10], "step": 5},
        },
        pruner={"kind": "median", "startup_trials": 4, "warmup_evals": 1},
        executor=EXECUTOR | {"pack": True, "runs_per_task": 2},
    )


def trials_of(folder: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="faults", storage=storage(folder)).get_trials()


def queued(arrays: set[str]) -> list[str]:
    """Our workers' tasks in the queue; a requeued one held for its begin time (SLURM holds
    a requeued job ~2 minutes) is released to start at once."""
    out = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i %T %r"],
        capture_output=True, text=True, timeout=30, check=False,
    ).stdout  # fmt: skip
    tasks = []
    for line in out.splitlines():
        task, state, reason = (line.split(maxsplit=2) + ["", ""])[:3]
        if task.split("_")[0] not in arrays:
            continue
        tasks.append(task)
        if state == "PENDING" and "BeginTime" in reason:
            scontrol("update", f"JobId={task}", "StartTime=now")
    return tasks


def starts(run: Path) -> list[int]:
    """The steps its run.log says the run started (or resumed) training from, in order."""
    log = run / "run.log"
    return [int(s) for s in START.findall(log.read_text())] if log.exists() else []


def sessions(run: Path) -> list[int]:
    """The step each take-up of the run (by a worker) started training from; one killed before
    it started training has none."""
    log = run / "run.log"
    firsts = []
    for part in SET_UP.split(log.read_text())[1:] if log.exists() else []:
        if found := START.search(part):
            firsts.append(int(found.group(1)))
    return firsts


def faults_until_the_workers_end(arrays: set[str], rng: random.Random, counts: Counter) -> None:
    """Every few seconds, each running worker with probability 1/2 (and at least one) is
    SIGKILLed, killed, requeued or cancelled, until none is left: a requeued one runs on, so a round
    whose faults were all requeues is not left undisturbed to the end of the study."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(3, 8))  # a worker takes ~5 s to start training
        tasks = running_tasks(arrays)
        if not tasks and not queued(arrays):
            return
        for task in [t for t in tasks if rng.random() < 0.5] or tasks[:1]:
            fault = rng.choice(STUDY_FAULTS)
            if fault != "sigkill" or not sigkill(task):
                fault = "kill" if fault == "sigkill" else fault  # its step not started yet
                inject(task, fault)
            counts[fault] += 1
    raise AssertionError("the workers did not end within 300 s")


def sigkill(task: str) -> bool:
    """SIGKILL the processes of the task's job step (the worker), no handler run; False when
    its step has not started."""
    job = subprocess.run(
        ["squeue", "-h", "-j", task, "-o", "%A"], capture_output=True, text=True, check=False
    ).stdout.split()
    out = subprocess.run(
        ["scontrol", "listpids", *job[:1]], capture_output=True, text=True, check=False
    ).stdout  # PID JOBID STEPID ...: step 0 is the worker, "batch" its sbatch script
    pids = [int(w[0]) for w in map(str.split, out.splitlines()[1:]) if w[2:3] == ["0"]]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return bool(job and pids)


def checkpointed(folder: Path) -> dict[str, int]:
    """Between rounds, nothing running: the runs not done that have a checkpoint, and how many
    times each has started so far (its next start must resume from a checkpoint)."""
    runs = sorted((folder / "runs").iterdir()) if (folder / "runs").exists() else []
    return {
        run.name: len(starts(run))
        for run in runs
        if RunDir(run).state() != "done" and RunDir(run).resumable_checkpoints()
    }


def damage(folder: Path, rng: random.Random, counts: Counter) -> None:
    """Between resubmissions: workers' process records, at least one: cut short where a killed
    worker left one (as a kill mid-write would), else garbage; and the journal's last line
    torn in half."""
    indices = [i for i in range(WORKERS) if rng.random() < 0.5] or [rng.randrange(WORKERS)]
    for index in indices:
        record = record_path(folder, index)
        if record.exists():  # left by a killed worker
            record.write_bytes(record.read_bytes()[: len(record.read_bytes()) // 2])
            counts["worker record cut short"] += 1
        else:
            record.parent.mkdir(exist_ok=True)
            record.write_bytes(b"\x00\xff garbage " + rng.randbytes(16))
            counts["worker record garbage"] += 1
    torn = tear_last_line(folder / "journal.log")
    counts["journal last line torn"] += 1
    counts[f"torn: {OP_NAMES.get(torn['op_code'], 'op')}"] += 1


@pytest.mark.slurm
@pytest.mark.slow
def test_faults_leave_a_study_with_its_budget_of_trials_each_trained_once(slurm_cluster, tmp_path):
    """Failed trials count against the budget (every trial asked does): the study ends with
    exactly BUDGET trials, whatever their states."""
    rng = random.Random(SEED)
    spec = fault_study()
    folder, counts = tmp_path / "faults", Counter()
    must_resume: dict[str, set[int]] = {}  # run -> its starts when it had a checkpoint
    began = time.monotonic()
    for round_ in range(12):
        submitted = submit(spec, tmp_path) if round_ == 0 else retry(folder)
        counts["resubmissions"] += round_ > 0
        arrays = {str(job.job_id).split("_")[0] for job in submitted.jobs}
        if round_ < FAULT_ROUNDS:
            faults_until_the_workers_end(arrays, rng, counts)
        wait_until(lambda a=arrays: not queued(a), 300, "the workers to end")
        for run, n in checkpointed(folder).items():
            must_resume.setdefault(run, set()).add(n)
        trials = trials_of(folder)
        if (
            round_ >= FAULT_ROUNDS
            and len(trials) == BUDGET
            and all(t.state.is_finished() for t in trials)
        ):
            break  # the budget is spent, nothing runs
        if round_ < FAULT_ROUNDS:
            damage(folder, rng, counts)
    else:
        raise AssertionError(
            f"the study did not end in 12 rounds: {Counter(t.state.name for t in trials)}"
        )
    # One more resubmission: the workers find nothing to do, and the journal stays as it is.
    journal = (folder / "journal.log").read_bytes()
    idle = {str(job.job_id).split("_")[0] for job in retry(folder).jobs}
    wait_until(lambda: not queued(idle), 120, "the idle workers to end")
    assert (folder / "journal.log").read_bytes() == journal
    assert not list((folder / "workers").glob("*.json"))  # damaged records replaced, then gone

    trials = trials_of(folder)
    states = Counter(t.state.name for t in trials)
    assert len(trials) == BUDGET, states  # every trial asked counts, failed ones too
    assert set(states) <= {"COMPLETE", "PRUNED", "FAIL"}, states  # none left running
    for t in trials:
        if t.state.name == "FAIL":
            assert t.user_attrs.get("error"), t.number
    (cell,) = study_cells(spec)
    run_ids = [t.user_attrs["run_id"] for t in trials if "run_id" in t.user_attrs]
    assert len(set(run_ids)) == len(run_ids)  # distinct parameters: a run each
    assert sorted(p.name for p in (folder / "runs").iterdir()) == sorted(run_ids)
    resumed = restarted = 0
    for t in trials:
        if "run_id" not in t.user_attrs:
            assert t.state.name == "FAIL", t.number
            continue
        run = folder / "runs" / t.user_attrs["run_id"]
        recorded = [e["number"] for e in json.loads((run / "trial.json").read_text())["trials"]]
        assert recorded == [t.number]  # the trial is recorded once, in its own run only
        config = json.loads((run / "config.json").read_text())["config"]
        assert config["train"]["lr"] == t.params["train.lr"]
        assert config["model"]["width"] == t.params["model.width"]
        if t.state.name in ("COMPLETE", "PRUNED"):
            result = json.loads((run / "result.json").read_text())
            assert RunDir(run).state() == "done" and result["pruned"] == (t.state.name == "PRUNED")
            rows = pd.read_parquet(RunDir(run).metrics).to_dict("records")
            if t.state.name == "COMPLETE":
                assert result["final"]["step"] == MAX_STEPS, t.number
                assert t.value == objective_value(spec, cell, rows), t.number
            # each value reported at evaluation i is the run's val/loss there: a resumed run's
            # evaluations are neither reported twice nor shifted. (To the last bits only where
            # the same pack computed both: an evaluation redone after a resume in a pack of
            # another size differs in them, and Optuna keeps the first value reported.)
            for i, value in t.intermediate_values.items():
                assert i < len(rows), (t.number, i, len(rows))
                assert value == pytest.approx(rows[i]["val/loss"], rel=1e-3), (t.number, i)
        steps = starts(run)
        assert steps == sorted(steps), (run.name, steps)  # never back to an earlier step
        for n in must_resume.get(run.name, ()):  # interrupted with a checkpoint: resumed
            assert steps[n:] and steps[n] > 0, (run.name, n, steps)
        firsts = sessions(run)  # later take-ups: resumed from a checkpoint, or none yet
        resumed += sum(1 for s in firsts[1:] if s > 0)
        restarted += sum(1 for s in firsts[1:] if s == 0)
    logs = "".join(p.read_text() for p in (folder / "submitit").glob("*_log.err"))
    assert "is damaged at line" not in logs and "AttributeError" not in logs
    faults = sum(counts[f] for f in STUDY_FAULTS)
    damaged = sum(v for k, v in counts.items() if k.startswith(("worker record", "journal")))
    print(
        f"study faults: {dict(counts)}; {faults} faults, {damaged} files damaged; trials "
        f"{dict(states)} of {BUDGET}; runs resumed from a checkpoint {resumed} time(s), "
        f"restarted from step 0 (no checkpoint yet) {restarted}; "
        f"{time.monotonic() - began:.0f} s"
    )
    assert faults >= 3 and damaged >= FAULT_ROUNDS
