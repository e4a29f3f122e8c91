"""Submit a study's workers (one array of spec.workers tasks), see where it stands, retry,
cancel. The studies and their trials live in the journal (study.py); the workers in jobs.jsonl,
like a sweep's tasks (each worker recorded as the "run" worker-<i>, so the sweep's queue code
tells which are queued or running with one squeue call, no sacct).
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rhmscale.errors import UserError
from rhmscale.store.atomic import atomic_write_text
from rhmscale.store.folders import SweepDir, read_field
from rhmscale.sweeps.dispatch import apply_executor_overrides, cancel_jobs, submit_record
from rhmscale.sweeps.executors import submit_calls
from rhmscale.sweeps.queue import active_states, latest_jobs
from rhmscale.sweeps.spec import spec_to_yaml
from rhmscale.tuning.checks import check_search
from rhmscale.tuning.liveness import live_workers
from rhmscale.tuning.spec import StudySpec, parse_study_spec
from rhmscale.tuning.study import (
    SPEC_FILE,
    STOPPED,
    best_trial,
    iter_studies,
    read_studies,
    resume_stopped,
    study_dir,
)
from rhmscale.tuning.worker import TuneTask, read_spec


def worker_name(index: int) -> str:
    return f"worker-{index}"


@dataclass
class Submitted:
    folder: SweepDir
    jobs: list[Any]  # submitit jobs, one per worker submitted
    kind: str  # the executor's


def submit(
    spec: StudySpec, root: Path, *, executor: dict[str, Any] | None = None, resume: bool = False
) -> Submitted:
    """Validate the whole study (checks.check_search), create its studies in the journal (with
    resume, `tune retry`'s: a study stopped by failures goes on), then submit the workers that
    are not queued or running."""
    ex = apply_executor_overrides(spec.executor, executor)
    check_search(spec)
    folder = study_dir(root, spec.name)
    with folder.lock():
        if folder.spec_file.exists():
            raise UserError(f"{folder.path} holds a sweep, not a study: choose another name")
        folder.path.mkdir(parents=True, exist_ok=True)
        stored = folder.path / SPEC_FILE
        if stored.exists() and read_spec(folder.path) != spec.model_dump(
            mode="json", by_alias=True
        ):
            raise UserError(
                f"{folder.path} holds study '{spec.name}' with another spec; use another name, "
                f"or `rhmscale tune retry {folder.path}` to go on with the one it holds"
            )
        atomic_write_text(stored, spec_to_yaml(spec))
        for _, study in iter_studies(folder.path, spec):  # each exists before a worker starts
            if resume:
                resume_stopped(study)
        alive = workers_alive(folder)
        todo = [i for i in range(spec.workers) if worker_name(i) not in alive]
        if not todo:
            return Submitted(folder, [], ex.kind)
        calls = [(str(folder.path), i) for i in todo]
        jobs = submit_calls(ex, folder.submitit, spec.name, TuneTask(), calls, slots=todo)
        folder.append_job_line(submit_record(ex, jobs, [[worker_name(i)] for i in todo]))
    return Submitted(folder, jobs, ex.kind)


def load_folder(path: Path) -> tuple[SweepDir, StudySpec]:
    folder = SweepDir(Path(path).resolve())
    if not (folder.path / SPEC_FILE).exists():
        raise UserError(f"{folder.path} is not a study folder (no {SPEC_FILE})")
    return folder, parse_study_spec(read_spec(folder.path), str(folder.path / SPEC_FILE))


def retry(path: Path, *, executor: dict[str, Any] | None = None) -> Submitted:
    """Resubmit the workers that are not queued or running: each goes on with the trial it
    held (from its run's checkpoint), then asks for new ones while budget is left."""
    folder, spec = load_folder(path)
    if folder.path.name != spec.name:
        raise UserError(f"{folder.path} holds study '{spec.name}': its folder must be named so")
    return submit(spec, folder.path.parent, executor=executor, resume=True)


def workers_alive(folder: SweepDir, strict: bool = True) -> dict[str, str]:
    """worker name -> queued | running: those jobs.jsonl names (squeue, local pids) and those
    recorded running on this host (liveness.py: e.g. inside a waiting `tune submit`)."""
    active = active_states(latest_jobs(folder.read_job_lines())[0], strict=strict)
    return active | {w.name: "running" for w in live_workers(folder.path)[0]}


def cancel(path: Path) -> tuple[list[str], str]:
    """Cancel the jobs jobs.jsonl names (scancel; a local controller passes SIGTERM on to its
    worker), then SIGTERM the workers that run on this host outside them (in a `tune submit`
    with the debug executor, or whose controller is gone): each checkpoints its trial and
    stops. Returns what was cancelled, and scancel's complaints."""
    folder, _ = load_folder(path)
    cancelled, complaints = cancel_jobs(folder)
    for worker in live_workers(folder.path)[0]:
        if worker.executor == "slurm" or worker.job_id in cancelled:
            continue  # stopped by scancel, or by its controller
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGTERM)
            cancelled.append(f"{worker.name} (pid {worker.pid})")
    return cancelled, complaints


@dataclass
class StudyStatus:
    name: str
    counts: dict[str, int]
    best_value: float | None
    best_params: dict[str, Any]
    trials: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None  # why it stopped before its budget was spent


@dataclass
class Status:
    studies: list[StudyStatus]
    workers: dict[str, str]  # worker name -> queued | running
    damaged: list[str]  # worker records that cannot be read (cut short)


def status(path: Path) -> Status:
    """Each study's trials by state, its best, and its trials; the workers queued or running.
    Reads only: a read-only study folder is fine."""
    folder, spec = load_folder(path)
    out = []
    for cell, study in read_studies(folder.path, spec):
        trials = study.get_trials(deepcopy=False) if study else []
        counts: dict[str, int] = {}
        rows = []
        for t in trials:
            state = t.state.name.lower()
            counts[state] = counts.get(state, 0) + 1
            run_id = t.user_attrs.get("run_id")
            run_dir = folder.path / "runs" / run_id if run_id else None
            rows.append(
                {
                    "number": t.number,
                    "state": state,
                    "value": t.value,
                    "params": t.params,
                    "run_id": run_id,
                    "run_state": SweepDir(folder.path).run_dir(run_id).state() if run_id else None,
                    "best_step": read_field(run_dir / "result.json", "best_step")
                    if run_dir
                    else None,
                    "error": t.user_attrs.get("error"),
                }
            )
        best = best_trial(study) if study else None
        out.append(
            StudyStatus(
                cell.study_name,
                counts,
                best.value if best else None,
                best.params if best else {},
                rows,
                study.user_attrs.get(STOPPED) if study else None,
            )
        )
    damaged = [str(p.relative_to(folder.path)) for p in live_workers(folder.path)[1]]
    return Status(out, workers_alive(folder, strict=False), damaged)
