"""What one worker of a study does: ask a study for trials, train them as runs, tell the
results; again, until every study's budget is spent.

With a packing executor (executor.pack, runs_per_task K) a worker asks K trials at once, the
later ones fixed to the first's shape (the searched keys a pack must share), and trains them as
one pack; their per-member keys (learning rate, clipping, ...) differ. A trial records in the
journal which worker asked for it (OWNER): requeued after a preemption (submitit Checkpointable,
SIGUSR2) or resubmitted by `tune retry` after it was killed, the worker goes on with its running
trials, from the runs' checkpoints, reporting to the same Optuna trials. So no trial is lost or
trained twice. A trial that cannot run (its parameters, its config, its pack) fails with its
reason; the worker goes on. SIGTERM/SIGINT (`tune cancel`) stop it between trials too.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import submitit

from rhmscale.config import RunConfig, member_keys
from rhmscale.errors import DamagedFile
from rhmscale.store.atomic import atomic_write_json
from rhmscale.store.folders import RunDir, read_field
from rhmscale.store.reading import read_parquet, read_text
from rhmscale.sweeps.job import (
    guard_requeue_handler,
    limit_gpu_memory,
    requeue_requested,
    set_threads,
)
from rhmscale.training.schedule import Verdict
from rhmscale.training.stop import honour_stop_signals
from rhmscale.training.stop import requested as stop_requested
from rhmscale.tuning.liveness import record_path, recorded
from rhmscale.tuning.spec import StudySpec
from rhmscale.tuning.study import (
    OWNER,
    Cell,
    State,
    budget_left,
    lock,
    objective_settled,
    objective_value,
    open_study,
    pack_size,
    record_trial,
    report_step,
    study_cells,
    trial_config,
)

log = logging.getLogger("rhmscale.tuning")


def history_of(run_dir: Path) -> list[dict[str, Any]]:
    """The run's evaluations; none when metrics.parquet is missing or damaged."""
    try:
        return read_parquet(RunDir(run_dir).metrics).to_dict("records")
    except (FileNotFoundError, DamagedFile):
        return []


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
        path = record_path(self.folder, self.index).with_suffix(".starts")
        starts = read_field(path, "starts") or 0
        atomic_write_json(path, {"starts": starts + 1})
        return starts

    def held(self) -> Job | None:
        """The trials this worker was on when it stopped (running, with its index), as one job;
        else one running trial that no worker holds (its worker died between asking for it and
        recording itself), adopted."""
        with lock(self.folder):  # no other worker adopts the same orphan
            for cell in self.cells:
                study = self.study(cell)
                running = study.get_trials(deepcopy=False, states=(State.RUNNING,))
                mine = [t for t in running if t.user_attrs.get(OWNER) == self.index]
                orphans = [t for t in running if OWNER not in t.user_attrs]
                chosen = mine or orphans[:1]
                if not chosen:
                    continue
                trials = [optuna.Trial(study, t._trial_id) for t in chosen]
                if not mine:
                    log.warning("trial %d of %s: adopted", chosen[0].number, cell.study_name)
                    trials[0].set_user_attr(OWNER, self.index)
                return Job(cell, study, trials)
        return None

    def ask(self) -> Job | None:
        """New trials from the first study with budget left (workers start at their own cell):
        one, or a pack whose later trials take the first's shape (the searched keys that a pack
        shares: architecture, width, ...; per-member keys such as train.lr vary). A trial whose
        parameters cannot be drawn or make no valid run fails here, and another is asked."""
        n = len(self.cells)
        shared = [k for k in self.spec.search if k not in member_keys()]
        for cell in (self.cells[(self.index + i) % n] for i in range(n)):
            with lock(self.folder):  # enqueue and ask together: no other worker takes ours
                study = self.study(cell)
                trials: list[optuna.Trial] = []
                while len(trials) < pack_size(self.spec) and budget_left(study, self.spec):
                    if trials and study.get_trials(deepcopy=False, states=(State.WAITING,)):
                        break  # ask() would pop the spec's next recipe: it starts its own pack
                    if trials and shared:
                        study.enqueue_trial({k: trials[0].params[k] for k in shared})
                    trial = study.ask()
                    trial.set_user_attr(OWNER, self.index)
                    try:
                        for key, dist in self.spec.search.items():
                            dist.suggest(trial, key)
                        self.config(cell, trial)
                    except Exception as exc:  # noqa: BLE001 - the trial fails, with the reason
                        fail(study, trial, f"cannot run these parameters: {exc}")
                        continue
                    trials.append(trial)
            if trials:
                return Job(cell, study, trials)
        return None

    def config(self, cell: Cell, trial: optuna.Trial) -> RunConfig:
        entry = {"study": cell.study_name, "number": trial.number, "params": trial.params}
        return trial_config(self.spec, cell, trial.params, entry)

    def run(self, threads: int) -> list[dict[str, Any]]:
        set_threads(threads)
        limit_gpu_memory(1 / self.spec.executor.tasks_per_gpu)  # workers sharing a GPU
        requeue = guard_requeue_handler()
        should_stop = requeue_requested if requeue else None
        self.restart = self.count_start()
        told: list[dict[str, Any]] = []
        interrupted = False
        # Stop signals are the worker's, not only the training's: submitit ignores SIGTERM, so
        # a `tune cancel` arriving between trials was lost and the worker asked on.
        with honour_stop_signals(), recorded(self.folder, self.index):
            job = self.held()
            while job is not None or not stop_requested():
                job = job or self.ask()
                if job is None:
                    break
                states = self.train(job, should_stop)
                interrupted = states is None  # the runs checkpointed
                if interrupted:
                    break
                told += [
                    {"study": job.cell.study_name, "number": t.number, "state": state}
                    for t, state in zip(job.trials, states, strict=True)
                ]
                job = None
        if interrupted and requeue and requeue_requested():  # scontrol requeue SIGTERMs us
            requeue()  # the requeued worker goes on with its trials
        return told

    def train(self, job: Job, should_stop) -> list[str] | None:
        """Train the trials' runs (one pack); tell the study how each ended. None when the
        runs were interrupted (the trials stay running, held by this worker). A trial whose
        run cannot be set up, or a pack that cannot train, fails with the reason."""
        from rhmscale.training import execute

        configs, trial_of = {}, {}
        for trial in job.trials:
            try:
                config = self.config(job.cell, trial)
            except Exception as exc:  # noqa: BLE001 - the trial fails, with the reason
                fail(job.study, trial, f"cannot run these parameters: {exc}")
                continue
            run_dir = self.folder / "runs" / config.run_id()
            run_dir.mkdir(parents=True, exist_ok=True)
            record_trial(run_dir, {"study": job.cell.study_name, "number": trial.number,
                                   "params": trial.params})  # fmt: skip
            trial.set_user_attr("run_id", config.run_id())
            configs.setdefault(config.run_id(), config)  # repeated parameters: one run
            trial_of.setdefault(config.run_id(), []).append(trial)
        run_dirs = [self.folder / "runs" / rid for rid in configs]
        judges = [
            self.judge(job.cell, trial_of[rid], d) for rid, d in zip(configs, run_dirs, strict=True)
        ]
        try:
            outcomes = execute(
                list(configs.values()), run_dirs, should_stop=should_stop, judge=judges
            ) if configs else []  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - e.g. a UserError: the run trains elsewhere
            for trial in itertools.chain(*trial_of.values()):
                fail(job.study, trial, str(exc))
        else:
            if any(o.state == "interrupted" for o in outcomes):
                return None
            for outcome, run_dir, rid in zip(outcomes, run_dirs, configs, strict=True):
                for trial in trial_of[rid]:
                    self.tell(job.study, job.cell, trial, outcome, run_dir)
        frozen = job.study.get_trials(deepcopy=False)
        return [frozen[t.number].state.name.lower() for t in job.trials]

    def judge(self, cell: Cell, trials: list[optuna.Trial], run_dir: Path):
        """Asked at each evaluation row of the run: report it to its trial(s); stop the run when
        its objective is settled (level learned: more training cannot change it) or when every
        trial it answers should be pruned."""
        rows = history_of(run_dir)

        def judge(row: dict[str, Any]) -> Verdict | None:
            # metrics.parquet, read before the run resumed, may hold rows past its checkpoint
            # (evaluated, then killed before the next checkpoint): the run redoes them
            rows[:] = [r for r in rows if r["step"] < row["step"]]
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
            fail(study, trial, outcome.error or outcome.state)


def fail(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    """The trial ends as failed, its reason recorded (tune status shows it)."""
    log.warning("trial %d of %s failed: %s", trial.number, study.study_name, reason)
    trial.set_user_attr("error", reason[:500])
    study.tell(trial, state=State.FAIL)


class TuneTask(submitit.helpers.Checkpointable):
    """One array task: worker `index` of the study folder; requeued with the same arguments."""

    def __call__(self, folder: str, index: int, threads: int = 1) -> list[dict[str, Any]]:
        from rhmscale.tuning.spec import parse_study_spec

        spec = parse_study_spec(read_spec(Path(folder)), str(Path(folder) / "study.yaml"))
        return Worker(Path(folder), spec, index).run(threads)


def read_spec(folder: Path) -> dict[str, Any]:
    """study.yaml's tree; a damaged one is a UserError saying how to write it again."""
    from rhmscale.config_io import safe_load

    path = Path(folder) / "study.yaml"
    try:
        return safe_load(read_text(path), str(path))
    except DamagedFile as exc:
        raise exc.with_remedy(
            f"move it aside (mv {path} {path}.damaged) and submit the study's spec again with "
            "the same --root (the trials in journal.log are kept)"
        ) from None
