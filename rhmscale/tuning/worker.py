"""What one worker of a study does: ask a study for a trial, train it as a run, tell the result;
again, until every study's budget is spent.

A worker remembers the trial it is on (workers/<index>.json): a worker requeued after a
preemption (submitit Checkpointable, SIGUSR2) or resubmitted by `tune retry` after it was
killed goes on with that trial, from the run's checkpoint, reporting to the same Optuna trial.
So no trial is lost, and none is trained twice.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import optuna
import submitit

from rhmscale.store.atomic import atomic_write_json
from rhmscale.store.folders import RunDir, read_field
from rhmscale.sweeps.job import guard_requeue_handler, requeue_requested, set_threads
from rhmscale.training.stop import requested as stop_requested
from rhmscale.tuning.spec import StudySpec
from rhmscale.tuning.study import (
    Cell,
    budget_left,
    lock,
    objective_value,
    open_study,
    record_trial,
    study_cells,
    trial_config,
)

log = logging.getLogger("rhmscale.tuning")
State = optuna.trial.TrialState


def history_of(run_dir: Path) -> list[dict[str, Any]]:
    store = RunDir(run_dir)
    if not store.metrics.exists():
        return []
    import pandas as pd

    return pd.read_parquet(store.metrics).to_dict("records")


class Worker:
    def __init__(self, folder: Path, spec: StudySpec, index: int) -> None:
        self.folder, self.spec, self.index = Path(folder), spec, index
        self.cells = study_cells(spec)
        self.state_file = self.folder / "workers" / f"{index}.json"
        self.studies: dict[str, optuna.Study] = {}
        self.restart = time.time_ns() % 997  # a requeued worker draws anew

    def study(self, cell: Cell) -> optuna.Study:
        """One Study (one sampler, whose stream advances) per cell for this worker's life."""
        if cell.study_name not in self.studies:
            self.studies[cell.study_name] = open_study(
                self.folder, self.spec, cell.study_name, self.index, self.restart
            )
        return self.studies[cell.study_name]

    def held_trial(self) -> tuple[Cell, optuna.Study, optuna.Trial] | None:
        """The trial this worker was on when it stopped, if it is still running."""
        name, number = read_field(self.state_file, "study"), read_field(self.state_file, "number")
        cell = next((c for c in self.cells if c.study_name == name), None)
        if cell is None or number is None:
            return None
        study = self.study(cell)
        frozen = study.get_trials(deepcopy=False)[number]
        if frozen.state != State.RUNNING:
            return None
        return cell, study, optuna.Trial(study, frozen._trial_id)

    def ask(self) -> tuple[Cell, optuna.Study, optuna.Trial] | None:
        """A new trial from the first study with budget left (workers start at their own cell)."""
        n = len(self.cells)
        for cell in (self.cells[(self.index + i) % n] for i in range(n)):
            with lock(self.folder):
                study = self.study(cell)
                if not budget_left(study, self.spec):
                    continue
                trial = study.ask()
                for key, dist in self.spec.search.items():
                    dist.suggest(trial, key)
                atomic_write_json(
                    self.state_file, {"study": cell.study_name, "number": trial.number}
                )
            return cell, study, trial
        return None

    def run(self, threads: int) -> list[dict[str, Any]]:
        set_threads(threads)
        requeue = guard_requeue_handler()
        should_stop = requeue_requested if requeue else None
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        told = []
        job = self.held_trial()
        while job is not None or not stop_requested():
            job = job or self.ask()
            if job is None:
                break
            state = self.train(*job, should_stop)
            if state == "interrupted":
                if requeue and requeue_requested():
                    requeue()  # the run checkpointed; the requeued worker goes on with it
                break
            told.append({"study": job[0].study_name, "number": job[2].number, "state": state})
            job = None
        return told

    def train(self, cell: Cell, study: optuna.Study, trial: optuna.Trial, should_stop) -> str:
        """Train the trial's run; tell the study how it ended (unless interrupted)."""
        from rhmscale.training import execute

        entry = {"study": cell.study_name, "number": trial.number, "params": trial.params}
        config = trial_config(self.spec, cell, trial.params, entry)
        run_dir = self.folder / "runs" / config.run_id()
        run_dir.mkdir(parents=True, exist_ok=True)
        record_trial(run_dir, entry)
        trial.set_user_attr("run_id", config.run_id())
        rows = history_of(run_dir)

        def prune(row: dict[str, Any]) -> bool:
            rows.append(row)
            trial.report(objective_value(self.spec, rows, final=False), len(rows) - 1)
            return trial.should_prune()

        outcome = execute([config], [run_dir], should_stop=should_stop, prune=[prune])[0]
        if outcome.state == "interrupted":
            return "interrupted"
        if outcome.state == "done" and outcome.result.get("pruned"):
            study.tell(trial, state=State.PRUNED)
        elif outcome.state == "done":
            study.tell(trial, objective_value(self.spec, history_of(run_dir)))
        else:  # failed, or trained elsewhere (a repeat of a running trial's parameters)
            trial.set_user_attr("error", (outcome.error or outcome.state)[:500])
            study.tell(trial, state=State.FAIL)
        self.state_file.unlink(missing_ok=True)
        return study.get_trials(deepcopy=False)[trial.number].state.name.lower()


class TuneTask(submitit.helpers.Checkpointable):
    """One array task: worker `index` of the study folder; requeued with the same arguments."""

    def __call__(self, folder: str, index: int, threads: int = 1) -> list[dict[str, Any]]:
        from rhmscale.tuning.spec import parse_study_spec

        spec = parse_study_spec(read_spec(Path(folder)), str(Path(folder) / "study.yaml"))
        return Worker(Path(folder), spec, index).run(threads)


def read_spec(folder: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((folder / "study.yaml").read_text())
