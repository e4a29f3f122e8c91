"""A study never jams (issue 19): trials that all fail end the study, with its reason; `tune
cancel` stops the workers a waiting `tune submit` started; a trial that cannot run fails with its
reason (its parameters, its config, its pack); a worker's damaged record loses no trial;
status and report read a read-only study folder; a damaged journal names its line."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from rhmscale.tuning.dispatch import submit
from rhmscale.tuning.spec import parse_study_spec
from rhmscale.tuning.study import storage
from rhmscale.tuning.worker import Worker
from tests.test_sweep_slurm import wait_until
from tests.test_tune import BASE, STUDY

RHMSCALE = str(Path(sys.executable).with_name("rhmscale"))
ONE_CELL = STUDY | {"grid": {"grammar.v": [4]}}
DIVERGING = {"train.lr": {"float": [1.0e9, 1.0e12], "log": True}}  # every run diverges at once


def tune(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RHMSCALE, "tune", *args], capture_output=True, text=True, timeout=timeout
    )


def write_spec(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def trials_of(folder: Path, name: str = "cells") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage(folder)).get_trials()


def status_json(folder: Path) -> dict:
    out = tune("status", str(folder), "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize(
    ("garbage", "then_a_trial"),
    [(b"\xff\xfe garbage\n", False), (b'{"torn": \n', True), (b"[1, 2]\n", False)],
)
def test_a_damaged_journal_names_its_line(tmp_path, garbage, then_a_trial):
    spec = parse_study_spec(ONE_CELL | {"budget": {"trials": 1}})
    for job in submit(spec, tmp_path).jobs:
        job.result()
    folder = tmp_path / "cells"
    journal = folder / "journal.log"
    lines = journal.read_bytes().count(b"\n")
    with open(journal, "ab") as handle:
        handle.write(garbage)
        if then_a_trial:  # a line after the damaged one: Optuna no longer skips it
            handle.write(journal.read_bytes().splitlines(keepends=True)[-1])
    for command in (["status"], ["retry"], ["report", "-o", str(tmp_path / "r")]):
        out = tune(*command, str(folder))
        assert out.returncode == 2, (command, out.stderr)
        assert "Traceback" not in out.stderr
        assert f"journal.log is damaged at line {lines + 1}" in out.stderr
        assert f"sed -i '{lines + 1}d'" in out.stderr


@contextlib.contextmanager
def read_only(folder: Path):
    """The folder and its files unwritable, for root too (chattr +i where it can be set)."""
    paths = [folder, *folder.rglob("*")]
    if os.geteuid() != 0:
        for path in paths:
            path.chmod(path.stat().st_mode & ~0o222)
        yield
        for path in paths:
            path.chmod(path.stat().st_mode | 0o200)
        return
    files = [str(p) for p in paths if not p.is_symlink()]
    if subprocess.run(["chattr", "+i", *files], capture_output=True).returncode:
        pytest.skip("cannot make files immutable here (chattr +i)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *files], check=True)


@pytest.mark.slow
def test_status_and_report_read_a_read_only_study_folder(tmp_path):
    spec = parse_study_spec(ONE_CELL)
    for job in submit(spec, tmp_path).jobs:
        job.result()
    folder = tmp_path / "cells"
    with read_only(folder):
        shown = tune("status", str(folder))
        assert shown.returncode == 0, shown.stderr
        assert "2 complete" in shown.stdout
        out = tmp_path / "report"
        report = tune("report", str(folder), "-o", str(out), "--wandb", "disabled")
        assert report.returncode == 0, report.stderr
        assert "train.lr" in (out / "best.json").read_text()


def test_a_pack_of_two_recipes_of_different_shapes_trains_each(tmp_path):
    """Two enqueued recipes of different widths, packed two by two: a recipe starts a pack of
    its own (before, the pack's second ask popped the other recipe: 'must share model.width'
    crashed the worker and left the trials running)."""
    spec = parse_study_spec(
        ONE_CELL
        | {
            "search": {
                "model.width": {"choices": [16, 32]},
                "train.lr": {"float": [1.0e-3, 1.0e-1], "log": True},
            },
            "enqueue": [
                {"model.width": 16, "train.lr": 1.0e-2},
                {"model.width": 32, "train.lr": 1.0e-2},
            ],
            "budget": {"trials": 4},
            "executor": {"kind": "debug", "pack": True, "runs_per_task": 2},
        }
    )
    for job in submit(spec, tmp_path).jobs:
        job.result()
    trials = trials_of(tmp_path / "cells")
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    widths = [t.params["model.width"] for t in trials]
    assert widths[:3] == [16, 32, 32]  # the first recipe alone, the second with its shape


TRANSFORMER = BASE | {"model": {"arch": "transformer", "width": 16, "heads": 4}}


@pytest.mark.parametrize(
    ("change", "enqueue", "reason"),
    [  # what validation now refuses before submission, met by a worker anyway
        ({}, [{"model.width": 32}], "32"),  # not among the choices: ValueError inside ask()
        (
            {"base": TRANSFORMER, "search": {"model.width": {"choices": [16, 42]}}},
            [{"model.width": 42}, {"model.width": 16}],
            "divisible",
        ),  # a width the model cannot take: its config fails validation in the worker
    ],
)
def test_a_trial_that_cannot_run_fails_with_its_reason(tmp_path, change, enqueue, reason):
    """Before, the worker crashed inside ask() or train(), and the trial stayed running with
    no worker; `tune retry` repeated the crash."""
    tree = ONE_CELL | {"search": {"model.width": {"choices": [16, 24]}}, "budget": {"trials": 2}}
    spec = parse_study_spec(tree | change)
    spec.enqueue = enqueue  # not validated: as if parse_study_spec had let it through
    Worker(tmp_path / "cells", spec, 0).run(1)
    trials = trials_of(tmp_path / "cells")
    assert trials[0].state.name == "FAIL" and reason in trials[0].user_attrs["error"]
    assert trials[1].state.name == "COMPLETE"  # the worker went on
    assert "RUNNING" not in {t.state.name for t in trials}


@pytest.mark.slow
def test_a_damaged_worker_record_loses_no_trial(tmp_path):
    """workers/0.json cut short (a SIGKILL, a full disk): status names it, and retry resumes
    the trial its worker held (the journal records which worker asked for a trial)."""
    spec = parse_study_spec(ONE_CELL | {"budget": {"trials": 1}})
    submit(spec, tmp_path)  # the debug worker would run at result(): it never does
    folder = tmp_path / "cells"
    job = Worker(folder, spec, 0).ask()  # then the worker is killed
    (held,) = job.trials
    record = folder / "workers" / "0.json"
    record.parent.mkdir(exist_ok=True)
    record.write_text('{"pid": 12')
    shown = tune("status", str(folder))
    assert "workers/0.json cannot be read" in shown.stdout
    assert "1 trial(s) running with no worker" in shown.stdout
    out = tune("retry", str(folder))
    assert out.returncode == 0, out.stderr
    (trial,) = trials_of(folder)
    assert trial.number == held.number and trial.state.name == "COMPLETE"


@pytest.mark.parametrize(
    ("budget", "failed"),
    [({"trials": 3}, 3), ({"trials": 50, "max_failures_in_a_row": 2}, 2)],
)
@pytest.mark.slow
def test_a_study_whose_trials_all_fail_ends_with_its_reason(tmp_path, budget, failed):
    """Failed trials count against the budget, and a streak of them stops the study; before,
    the workers asked for new trials forever (6,343 failed trials in 10 minutes). The submit
    that waited for it fails (exit 1; it was 0), saying why."""
    spec = write_spec(tmp_path, ONE_CELL | {"search": DIVERGING, "budget": budget})
    out = tune("submit", str(spec), "--root", str(tmp_path / "runs"), timeout=90)
    assert out.returncode == 1, out.stderr
    assert f"{failed} trials in a row failed" in out.stdout
    (study,) = status_json(tmp_path / "runs" / "cells")["studies"]
    assert study["counts"] == {"fail": failed}
    assert f"{failed} trials in a row failed" in study["stopped"]
    assert "diverged" in study["stopped"] and "tune retry" in study["stopped"]


@pytest.mark.parametrize("kind", ["debug", "local"])
@pytest.mark.slow
def test_cancel_stops_the_workers_of_a_waiting_tune_submit(tmp_path, kind):
    """The debug executor's worker runs inside `tune submit`, a local one under its controller:
    cancel finds both (before, the debug one was 'nothing was queued or running'); the worker
    checkpoints its trial and stops, and `tune submit` returns."""
    base = BASE | {"train": BASE["train"] | {"max_steps": 4000, "checkpoint_every": 20}}
    spec = write_spec(
        tmp_path, ONE_CELL | {"base": base, "budget": {"trials": 1}, "executor": {"kind": kind}}
    )
    folder = tmp_path / "runs" / "cells"
    waiting = subprocess.Popen(
        [RHMSCALE, "tune", "submit", str(spec), "--root", str(tmp_path / "runs")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: any(folder.glob("runs/*/checkpoints/last.ckpt")), 120, "a checkpoint")
        out = tune("cancel", str(folder))
        assert out.returncode == 0 and "nothing was queued" not in out.stdout, out.stdout
        waiting.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            waiting.kill()
    now = status_json(folder)
    assert now["workers"] == {} and now["studies"][0]["counts"] == {"running": 1}
