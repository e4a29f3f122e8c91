"""What one worker of a study does: ask a study for trials, train them as runs, tell the
results; again, until every study's budget is spent.

With a packing executor (executor.pack, runs_per_task K) a worker asks K trials at once, the
later ones fixed to the first's shape (the searched keys a pack must share), and trains them as
one pack; their per-member keys (learning rate, clipping, ...) differ. A worker remembers the
trials it is on (workers/<index>.json): requeued after a preemption (submitit Checkpointable,
SIGUSR2) or resubmitted by `tune retry` after it was killed, it goes on with them, from the
runs' checkpoints, reporting to the same Optuna trials. So no trial is lost or trained twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import submitit

from rhmscale.config import member_keys
from rhmscale.store.atomic import atomic_write_json
from rhmscale.store.folders import RunDir, read_field
from rhmscale.sweeps.job import (
    guard_requeue_handler,
    limit_gpu_memory,
    requeue_requested,
    set_threads,
)
from rhmscale.training.schedule import Verdict
from rhmscale.training.stop import requested as stop_requested
from rhmscale.tuning.spec import StudySpec
from rhmscale.tuning.study import (
    Cell,
    budget_left,
    lock,
    objective_settled,
    objective_value,
    open_study,
    record_trial,
    report_step,
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


@dataclass
class Job:
    """Trials of one study that a worker trains together."""

    cell: Cell
    study: optuna.Study
    trials: list[optuna.Trial]


class Worker:
    def __init__(self, folder: Path, spec: StudySpec, index: int) -> None:
        self.folder, self.spec, self.index = Path(folder), spec, index
        self.cells = study_cells(spec)
        self.state_file = self.folder / "workers" / f"{index}.json"
        self.studies: dict[str, optuna.Study] = {}
        self.restart = 0  # set by run(): how many times this worker started before

    def study(self, cell: Cell) -> optuna.Study:
        """One Study (one sampler, whose stream advances) per cell for this worker's life."""
        if cell.study_name not in self.studies:
            self.studies[cell.study_name] = open_study(
                self.folder, self.spec, cell.study_name, self.index, self.restart
            )
        return self.studies[cell.study_name]

    def count_start(self) -> int:
        """The starts of this worker before this one: 0 in a fresh study folder, so a seeded
        study draws the same trials when run again; a requeued or retried worker (whose
        sampler must not repeat what it drew) a new stream each time."""
        path = self.state_file.with_suffix(".starts")
        starts = read_field(path, "starts") or 0
        atomic_write_json(path, {"starts": starts + 1})
        return starts

    @property
    def pack_size(self) -> int:
        """Trials trained together: executor.runs_per_task when the executor packs."""
        return self.spec.executor.runs_per_task if self.spec.executor.pack else 1

    def held(self) -> Job | None:
        """The trials this worker was on when it stopped, those still running."""
        name, numbers = read_field(self.state_file, "study"), read_field(self.state_file, "numbers")
        cell = next((c for c in self.cells if c.study_name == name), None)
        if cell is None or not numbers:
            return None
        study = self.study(cell)
        frozen = study.get_trials(deepcopy=False)
        trials = [
            optuna.Trial(study, frozen[n]._trial_id)
            for n in numbers
            if frozen[n].state == State.RUNNING
        ]
        return Job(cell, study, trials) if trials else None

    def ask(self) -> Job | None:
        """New trials from the first study with budget left (workers start at their own cell):
        one, or a pack whose later trials take the first's shape (the searched keys that a pack
        shares: architecture, width, ...; per-member keys such as train.lr vary)."""
        n = len(self.cells)
        shared = [k for k in self.spec.search if k not in member_keys()]
        for cell in (self.cells[(self.index + i) % n] for i in range(n)):
            with lock(self.folder):  # enqueue and ask together: no other worker takes ours
                study = self.study(cell)
                trials: list[optuna.Trial] = []
                while len(trials) < self.pack_size and budget_left(study, self.spec):
                    if trials:
                        study.enqueue_trial({k: trials[0].params[k] for k in shared})
                    trial = study.ask()
                    for key, dist in self.spec.search.items():
                        dist.suggest(trial, key)
                    trials.append(trial)
                if not trials:
                    continue
                numbers = [t.number for t in trials]
                atomic_write_json(self.state_file, {"study": cell.study_name, "numbers": numbers})
            return Job(cell, study, trials)
        return None

    def run(self, threads: int) -> list[dict[str, Any]]:
        set_threads(threads)
        limit_gpu_memory(1 / self.spec.executor.tasks_per_gpu)  # workers sharing a GPU
        requeue = guard_requeue_handler()
        should_stop = requeue_requested if requeue else None
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        self.restart = self.count_start()
        told: list[dict[str, Any]] = []
        job = self.held()
        while job is not None or not stop_requested():
            job = job or self.ask()
            if job is None:
                break
            states = self.train(job, should_stop)
            if states is None:  # interrupted: the runs checkpointed
                if requeue and requeue_requested():
                    requeue()  # the requeued worker goes on with them
                break
            told += [
                {"study": job.cell.study_name, "number": t.number, "state": state}
                for t, state in zip(job.trials, states, strict=True)
            ]
            job = None
        return told

    def train(self, job: Job, should_stop) -> list[str] | None:
        """Train the trials' runs (one pack); tell the study how each ended. None when the
        runs were interrupted (the trials stay running, held by this worker)."""
        from rhmscale.training import execute

        configs, trial_of = {}, {}
        for trial in job.trials:
            entry = {"study": job.cell.study_name, "number": trial.number, "params": trial.params}
            config = trial_config(self.spec, job.cell, trial.params, entry)
            run_dir = self.folder / "runs" / config.run_id()
            run_dir.mkdir(parents=True, exist_ok=True)
            record_trial(run_dir, entry)
            trial.set_user_attr("run_id", config.run_id())
            configs.setdefault(config.run_id(), config)  # repeated parameters: one run
            trial_of.setdefault(config.run_id(), []).append(trial)
        run_dirs = [self.folder / "runs" / rid for rid in configs]
        judges = [
            self.judge(job.cell, trial_of[rid], d) for rid, d in zip(configs, run_dirs, strict=True)
        ]
        outcomes = execute(list(configs.values()), run_dirs, should_stop=should_stop, judge=judges)
        if any(o.state == "interrupted" for o in outcomes):
            return None
        for outcome, run_dir, rid in zip(outcomes, run_dirs, configs, strict=True):
            for trial in trial_of[rid]:
                self.tell(job.study, job.cell, trial, outcome, run_dir)
        self.state_file.unlink(missing_ok=True)
        frozen = job.study.get_trials(deepcopy=False)
        return [frozen[t.number].state.name.lower() for t in job.trials]

    def judge(self, cell: Cell, trials: list[optuna.Trial], run_dir: Path):
        """Asked at each evaluation row of the run: report it to its trial(s); stop the run when
        its objective is settled (level learned: more training cannot change it) or when every
        trial it answers should be pruned."""
        rows = history_of(run_dir)

        def judge(row: dict[str, Any]) -> Verdict | None:
            rows.append(row)
            if objective_settled(self.spec, rows):
                return "settled"
            value = objective_value(self.spec, cell, rows, final=False)
            step = report_step(self.spec, row, len(rows) - 1)
            for trial in trials:
                trial.report(value, step)
            if len(rows) <= self.spec.pruner.warmup_evals:
                return None
            return "pruned" if all(trial.should_prune() for trial in trials) else None

        return judge

    def tell(
        self, study: optuna.Study, cell: Cell, trial: optuna.Trial, outcome: Any, run_dir: Path
    ) -> None:
        if outcome.state == "done" and outcome.result.get("pruned"):
            study.tell(trial, state=State.PRUNED)
        elif outcome.state == "done":
            study.tell(trial, objective_value(self.spec, cell, history_of(run_dir)))
        else:  # failed, or trained elsewhere (a repeat of a running trial's parameters)
            trial.set_user_attr("error", (outcome.error or outcome.state)[:500])
            study.tell(trial, state=State.FAIL)


class TuneTask(submitit.helpers.Checkpointable):
    """One array task: worker `index` of the study folder; requeued with the same arguments."""

    def __call__(self, folder: str, index: int, threads: int = 1) -> list[dict[str, Any]]:
        from rhmscale.tuning.spec import parse_study_spec

        spec = parse_study_spec(read_spec(Path(folder)), str(Path(folder) / "study.yaml"))
        return Worker(Path(folder), spec, index).run(threads)


def read_spec(folder: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((folder / "study.yaml").read_text())
