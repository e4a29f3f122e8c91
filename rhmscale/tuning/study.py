"""The studies of a study folder, in Optuna's JournalStorage (a file on the shared file system).

<root>/<name>/: study.yaml (the spec), journal.log (every study's trials; optuna-dashboard
opens it), runs/<run_id>/ (each trial an ordinary run folder, with trial.json saying which
trials it answered), jobs.jsonl and submitit/ (the workers). One study per cell, or one shared
(spec.per_cell). A trial's run id is its config's, so a trial that repeats another's parameters
reuses its run instead of training it twice.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from rhmscale.config import RunConfig
from rhmscale.config_io import set_dotted, validate_config
from rhmscale.store.atomic import atomic_write_json
from rhmscale.store.folders import SweepDir, read_field
from rhmscale.store.lock import file_lock
from rhmscale.sweeps.grid import Point, base_tree
from rhmscale.tuning.journal import CheckedJournal
from rhmscale.tuning.spec import StudySpec, cells

optuna.logging.set_verbosity(optuna.logging.WARNING)  # its one line per study opened is noise

SPEC_FILE = "study.yaml"
JOURNAL = "journal.log"
State = optuna.trial.TrialState
FINISHED = (State.COMPLETE, State.PRUNED, State.FAIL)
# Trials that count against the budget: every trial asked, failed ones too (a study whose
# trials all fail must end). Enqueued trials wait to be asked (ask() takes them first).
COUNTED = (*FINISHED, State.RUNNING)
OWNER = "worker"  # a trial's user attribute: the index of the worker that asked for it
STOPPED = "stopped"  # a study's user attribute: why it stopped before its budget was spent
STREAK_FROM = "failure_streak_from"  # ... and the trial number its failures count from


@dataclass(frozen=True)
class Cell:
    study_name: str
    point: Point  # the cell's config (the base with its grid values)


def study_cells(spec: StudySpec) -> list[Cell]:
    """One study per cell (named '<name>/<grid values>'), or one shared by every cell."""
    points = cells(spec)
    if not spec.per_cell:
        return [Cell(spec.name, point) for point in points]
    if len(points) == 1:
        return [Cell(spec.name, points[0])]
    return [Cell(f"{spec.name}/{cell_label(p)}", p) for p in points]


def cell_label(point: Point) -> str:
    return ",".join(f"{k}={v}" for k, v in point.values.items())


def storage(folder: Path) -> optuna.storages.JournalStorage:
    """The folder's journal (created when missing); a damaged line is a UserError."""
    return optuna.storages.JournalStorage(CheckedJournal(str(Path(folder) / JOURNAL)))


def make_sampler(spec: StudySpec, worker: int, restart: int = 0) -> optuna.samplers.BaseSampler:
    # Each worker, and each start of it, its own stream: samplers seeded alike would propose
    # the same parameters (keep one sampler per worker and study: it advances its stream).
    seed = spec.sampler.seed + 1000 * worker + 1_000_000 * restart
    if spec.sampler.kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(spec))


def startup_trials(spec: StudySpec) -> int:
    """TPE's random start, counted in packs: a pack's trials share one draw of the shape keys,
    so 10 trials would be one shape, after which TPE would propose that shape again (at a
    full-size GPU study, 4 packs of 16 explored 2 shapes). Up to 10 packs, half the budget's."""
    pack = pack_size(spec)
    return pack * min(10, spec.budget.trials // pack // 2)


def pack_size(spec: StudySpec) -> int:
    """Trials a worker trains together: executor.runs_per_task when the executor packs."""
    return spec.executor.runs_per_task if spec.executor.pack else 1


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """Trials are compared where report_step puts their values; the median pruner's warm-up
    (evaluations, whatever the step unit) is the worker's: it asks only after warmup_evals."""
    if spec.pruner.kind == "none":
        return optuna.pruners.NopPruner()
    if spec.pruner.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.MedianPruner(n_startup_trials=spec.pruner.startup_trials)


def report_step(spec: StudySpec, row: dict[str, Any], index: int) -> int:
    """Where an intermediate value is reported, i.e. where trials are compared. samples_to_learn:
    at the samples seen, so a trial with a small batch is compared with others at as many
    samples, not at as many steps (where it has seen fewer and looks behind: a step axis
    pruned every batch-64 trial of a study whose best trials had batch 64). Otherwise at
    evaluation `index` (0, 1, ...): the same point of training whatever the step counts."""
    if spec.objective.samples_to_learn is not None:
        return int(row["samples_seen"])
    return index


def open_study(
    folder: Path, spec: StudySpec, name: str, worker: int = 0, restart: int = 0
) -> optuna.Study:
    journal = storage(folder)
    sampler, pruner = make_sampler(spec, worker, restart), make_pruner(spec)
    try:  # load first: create_study appends a line to the journal even for a study it loads
        study = optuna.load_study(study_name=name, storage=journal, sampler=sampler, pruner=pruner)
    except KeyError:
        study = optuna.create_study(
            storage=journal,
            study_name=name,
            direction=spec.objective.study_direction,
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        )
    if "created" not in study.user_attrs:  # a new study: its clock starts, its first trials
        study.set_user_attr("created", time.time())
        for params in spec.enqueue:
            study.enqueue_trial(params, skip_if_exists=True)
    return study


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The study's best completed trial, or None while none has completed."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return study.best_trial if done else None


def lock(folder: Path) -> contextlib.AbstractContextManager[None]:
    """Held while a worker counts a study's trials and asks for one: the budget holds."""
    return file_lock(Path(folder) / ".tune.lock")


def budget_left(study: optuna.Study, spec: StudySpec) -> bool:
    """Whether a worker may ask the study for another trial: trials and time are left, and it
    has not stopped (recorded in the journal, for tune status and optuna-dashboard)."""
    reason = stop_reason(study, spec)
    if reason is not None:
        if study.user_attrs.get(STOPPED) != reason:
            study.set_user_attr(STOPPED, reason)
        return False
    if len(study.get_trials(deepcopy=False, states=COUNTED)) >= spec.budget.trials:
        return False
    if spec.budget.time_min is None:
        return True
    return time.time() - study.user_attrs["created"] < 60 * spec.budget.time_min


def stop_reason(study: optuna.Study, spec: StudySpec) -> str | None:
    """Why the study stops before its budget is spent: its last max_failures_in_a_row finished
    trials failed (counted from the last `tune retry`); None while it goes on."""
    since = study.user_attrs.get(STREAK_FROM, 0)
    finished = [t for t in study.get_trials(deepcopy=False, states=FINISHED) if t.number >= since]
    finished.sort(key=lambda t: t.datetime_complete or t.datetime_start)
    streak = list(itertools.takewhile(lambda t: t.state == State.FAIL, reversed(finished)))
    if not streak or len(streak) < min(spec.budget.max_failures_in_a_row, spec.budget.trials):
        return None
    last = streak[0]
    error = last.user_attrs.get("error", "no error recorded")
    return (
        f"{len(streak)} trials in a row failed (the last, trial {last.number}: {error}); fix the "
        "cause (its run folder's failed.json and run.log say more), then `rhmscale tune retry` "
        "on the study folder goes on while budget is left (failed trials count), or submit the "
        "spec, changed, under another name"
    )


def resume_stopped(study: optuna.Study) -> None:
    """`tune retry`: a study stopped by failures goes on (its streak counts from here)."""
    if study.user_attrs.get(STOPPED):
        study.set_user_attr(STREAK_FROM, len(study.get_trials(deepcopy=False)))
        study.set_user_attr(STOPPED, None)


def trial_config(
    spec: StudySpec, cell: Cell, params: dict[str, Any], trial: dict, where: str | None = None
) -> RunConfig:
    """The cell's config with the trial's parameters; W&B: job type trial, group the study.
    samples_to_learn: every trial may see the same samples (samples_cap), so a trial with a
    smaller batch trains for more steps; with a fixed max_steps it saw fewer samples and
    ranked behind a larger batch that was less sample-efficient but saw more."""
    tree = base_tree(spec)
    for key, value in {**cell.point.values, **params}.items():
        set_dotted(tree, key, value)
    tree["tracking"] |= {"job_type": "trial", "group": cell.study_name, "trial": trial}
    where = where or f"study {cell.study_name}, trial {trial.get('number')}"
    config = validate_config(tree, where)
    if spec.objective.samples_to_learn is None:
        return config
    steps = math.ceil(samples_cap(spec, cell) / config.train.batch_size)
    set_dotted(tree, "train.max_steps", steps)
    return validate_config(tree, where)


def record_trial(run_dir: Path, entry: dict[str, Any]) -> None:
    """trial.json in the run folder: every trial the run answered (one, unless repeated)."""
    path = Path(run_dir) / "trial.json"
    entries = read_field(path, "trials") or []
    if entry not in entries:
        atomic_write_json(path, {"trials": [*entries, entry]})


def objective_value(
    spec: StudySpec, cell: Cell, history: list[dict[str, Any]], final: bool = True
) -> float:
    """The objective from a run's evaluation rows. samples_to_learn: samples seen at the first
    evaluation where the level's novel accuracy reached the threshold. A run that has not
    learned it scores cap * (2 - best accuracy / threshold), cap = the most samples any trial
    of the cell can see: behind every run that learned, closer ones ahead (so the sampler and
    the pruner see progress), and independent of its own batch size (a small batch must not
    look cheaper for having seen fewer samples)."""
    objective = spec.objective
    if objective.samples_to_learn is not None:
        goal = objective.samples_to_learn
        learned = learned_at(goal, history)
        if learned is not None:
            return float(learned["samples_seen"])
        accuracy = [row.get(level_key(goal), math.nan) for row in history]
        best = max((a for a in accuracy if math.isfinite(a)), default=0.0)
        return samples_cap(spec, cell) * (2.0 - best / goal["threshold"])
    scored = [r for r in history if math.isfinite(r.get("val/loss", math.nan))]
    row = history[-1]
    if objective.at == "best" and final and scored:
        row = min(scored, key=lambda r: r["val/loss"])
    if objective.metric not in row:
        raise KeyError(f"metric {objective.metric} is not recorded (have: {', '.join(row)})")
    return float(row[objective.metric])


def objective_settled(spec: StudySpec, history: list[dict[str, Any]]) -> bool:
    """Whether more evaluations cannot change the objective: samples_to_learn, once the level
    is learned (its value is the samples seen then)."""
    goal = spec.objective.samples_to_learn
    return goal is not None and learned_at(goal, history) is not None


def learned_at(goal: dict[str, float], history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first evaluation row where the level's novel accuracy reached the threshold."""
    key = level_key(goal)
    return next((row for row in history if row.get(key, 0.0) >= goal["threshold"]), None)


def level_key(goal: dict[str, float]) -> str:
    return f"gen/novel_acc_l{int(goal['level'])}"


def samples_cap(spec: StudySpec, cell: Cell) -> float:
    """The samples every trial of the cell may see: the cell's max_steps x the largest batch
    size the search allows (train.max_steps cannot be searched with samples_to_learn)."""
    train = cell.point.config.train
    batch = spec.search.get("train.batch_size")
    return train.max_steps * (max(batch.corners()) if batch else train.batch_size)


def study_dir(root: Path, name: str) -> SweepDir:
    return SweepDir((Path(root) / name).resolve())


def iter_studies(folder: Path, spec: StudySpec) -> Iterator[tuple[Cell, optuna.Study]]:
    """Each cell's study, created in the journal when missing (submit, retry)."""
    for cell in study_cells(spec):
        yield cell, open_study(folder, spec, cell.study_name)


def read_studies(folder: Path, spec: StudySpec) -> Iterator[tuple[Cell, optuna.Study | None]]:
    """Each cell's study as the journal holds it, None for one not created yet; writes nothing
    (status and report work on a read-only study folder)."""
    if not (Path(folder) / JOURNAL).exists():
        yield from ((cell, None) for cell in study_cells(spec))
        return
    journal = storage(folder)
    for cell in study_cells(spec):
        try:
            yield cell, optuna.load_study(study_name=cell.study_name, storage=journal)
        except KeyError:
            yield cell, None
