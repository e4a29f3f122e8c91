"""Submit a sweep: one job array per submission; wait for it, retry it, cancel it.

submit() expands the spec (validating every run), leaves out runs that are done or still
queued/running, plans the rest in packs (grouping.py: what `sweep plan` shows, and how many
workers), writes them to the sweep's backlog (backlog.py) and starts the workers as ONE array
(executors.py), then writes <root>/<name>/sweep.yaml and appends one line to jobs.jsonl, all
under the sweep's lock. Each worker (job.SweepWorker) takes runs from the backlog until none is
left, resuming what was interrupted. When workers of the sweep still live, a submission only
adds its runs to the backlog, and the living workers take them: no new start-up.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rhmscale.config import pack_key
from rhmscale.config_io import validated
from rhmscale.errors import UserError
from rhmscale.store.atomic import atomic_write_text
from rhmscale.store.folders import RunDir, SweepDir
from rhmscale.sweeps.backlog import Backlog
from rhmscale.sweeps.cost import pack_cost
from rhmscale.sweeps.executors import preflight, submit_workers
from rhmscale.sweeps.grid import Expansion, expand_points
from rhmscale.sweeps.grouping import Item, group_tasks, slots_of
from rhmscale.sweeps.queue import active_states, latest_jobs, pid_alive, squeue_states
from rhmscale.sweeps.spec import ExecutorSpec, SweepSpec, spec_to_yaml
from rhmscale.sweeps.status import SweepStatus, load_sweep_spec, status_of

# States (RunStatus.submit_state) a plain `submit` resubmits; `retry` all but pending (never
# submitted). "unrecorded": pending, though its job ended (it left no outcome).
# A diverged run would diverge again (same config, same seeds): change the config instead.
SUBMITTABLE = {"pending", "unrecorded", "failed", "corrupt", "interrupted", "cancelled"}
RETRYABLE = {"unrecorded", "failed", "corrupt", "interrupted", "cancelled"}


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass
class Prepared:
    """A submission, planned: the runs to submit, in tasks, and the sweep's state before."""

    spec: SweepSpec
    sweep: SweepDir
    executor: ExecutorSpec  # the spec's, with the command line's overrides
    tasks: list[list[Item]]
    status: SweepStatus

    @property
    def run_ids(self) -> list[str]:
        """Each run once (local workers that share a queue each hold every run)."""
        return list(dict.fromkeys(item["run_id"] for task in self.tasks for item in task))

    @property
    def n_runs(self) -> int:
        return len(self.status.runs)


def apply_executor_overrides(spec: ExecutorSpec, overrides: dict[str, Any] | None) -> ExecutorSpec:
    """The spec's executor with the given fields replaced (None leaves a field as it is)."""
    data = spec.model_dump()
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return validated(ExecutorSpec, data, "executor: ")


def prepare(
    spec: SweepSpec,
    root: Path,
    *,
    executor: dict[str, Any] | None = None,
    states: Iterable[str] = SUBMITTABLE,
    query_queue: bool = True,
    runs: Iterable[str] | None = None,
) -> Prepared:
    """Everything a submission needs, without submitting: the runs to submit, in tasks.
    runs: only these run ids (a refinement's new runs); None: any run of the spec."""
    ex = apply_executor_overrides(spec.executor, executor)
    return prepare_expanded(spec, root, ex, expand_points(spec), states, query_queue, runs)


def prepare_expanded(
    spec: SweepSpec,
    root: Path,
    ex: ExecutorSpec,
    expansion: Expansion,
    states: Iterable[str],
    query_queue: bool = True,
    runs: Iterable[str] | None = None,
) -> Prepared:
    sweep = SweepDir((Path(root) / spec.name).resolve())
    check_same_runs(sweep, expansion)
    status = status_of(sweep, spec.name, expansion, query_queue=query_queue, strict=True)
    wanted = set(states)
    only = None if runs is None else set(runs)
    items = [
        {
            "run_id": point.run_id,
            "config": point.config.model_dump(mode="json"),
            "run_dir": str(sweep.run_dir(point.run_id).path.resolve()),
            "shape": pack_key(point.config),
            "cost": pack_cost([point.config]),
        }
        for point, run in zip(expansion.points, status.runs, strict=True)
        if run.submit_state in wanted and (only is None or point.run_id in only)
    ]
    return Prepared(spec, sweep, ex, group_tasks(items, ex), status)


@dataclass
class Submission:
    prepared: Prepared
    jobs: list[Any]  # submitit jobs, one per task
    record: dict[str, Any] | None  # the jobs.jsonl line, None when nothing was submitted

    @property
    def n_submitted(self) -> int:
        return len(self.prepared.run_ids)

    @property
    def array_ids(self) -> list[str]:
        """The scheduler's ids of what was submitted (one array on SLURM, pids locally)."""
        tasks = self.record["tasks"] if self.record else []
        return sorted({str(task["job_id"]).split("_")[0] for task in tasks})


def submit_prepared(prepared: Prepared) -> Submission:
    """Call with the sweep's lock held (submit does)."""
    spec, sweep, ex = prepared.spec, prepared.sweep, prepared.executor
    sweep.path.mkdir(parents=True, exist_ok=True)
    resolved = spec.model_copy(update={"executor": ex})
    if not prepared.tasks:
        atomic_write_text(sweep.spec_file, spec_to_yaml(resolved))
        return Submission(prepared, [], None)
    preflight(ex)  # before the run folders exist (make_executor asks again, for tuning too)
    items = list({item["run_id"]: item for task in prepared.tasks for item in task}.values())
    for item in items:
        Path(item["run_dir"]).mkdir(parents=True, exist_ok=True)
        # A resubmitted failed run is queued again (workers leave failed runs alone): its
        # failure is kept beside it until it runs.
        failed = RunDir(Path(item["run_dir"])).failed
        if failed.exists():
            os.replace(failed, failed.with_name("failed.before-retry.json"))
    Backlog(sweep).put(items)
    run_ids = [item["run_id"] for item in items]
    if living := live_workers(sweep):
        # The living workers take the new runs at their next look; nothing starts.
        record = {"event": "submit", "time": now(), "kind": living[0][0], "adopted": True,
                  "tasks": [{"job_id": jid, "run_ids": run_ids} for _, jid in living],
                  "n_runs": len(run_ids)}  # fmt: skip
        atomic_write_text(sweep.spec_file, spec_to_yaml(resolved))
        sweep.append_job_line(record)
        return Submission(prepared, [], record)
    slots = slots_of(prepared.tasks)
    jobs = submit_workers(ex, sweep.submitit, spec.name, sweep.path, len(prepared.tasks), slots)
    record = submit_record(ex, jobs, [run_ids] * len(jobs)) | {"n_runs": len(run_ids)}
    atomic_write_text(sweep.spec_file, spec_to_yaml(resolved))  # after sbatch accepted it
    sweep.append_job_line(record)
    return Submission(prepared, jobs, record)


def wait_runs(
    sweep: SweepDir, run_ids: list[str], poll_s: float = 5.0, on_poll: Any = None
) -> dict[str, str]:
    """Wait until every run has ended (done, failed, diverged), or no live worker is left to
    train the others; each run's state then. on_poll(states) after each look."""
    from rhmscale.sweeps.backlog import ENDED

    while True:
        states = sweep.run_states(run_ids)
        if on_poll is not None:
            on_poll(states)
        if all(state in ENDED for state in states.values()):
            return states
        if not live_workers(sweep, strict=False):
            return sweep.run_states(run_ids)  # a worker may have ended just after its run
        time.sleep(poll_s)


def live_workers(sweep: SweepDir, strict: bool = True) -> list[tuple[str, str]]:
    """(kind, job id) of the sweep's workers that are queued or running and have not ended:
    a submission leaves its runs to them. ONE squeue call for SLURM workers."""
    records = sweep.read_job_lines()
    ended = {str(r["job_id"]) for r in records if r.get("event") == "worker-exit"}
    for r in records:
        if r.get("event") == "cancel":
            ended.update(str(j) for j in r.get("job_ids", []))
    workers = {
        (r.get("kind", "slurm"), str(task["job_id"]))
        for r in records
        if r.get("event") == "submit" and not r.get("adopted")
        for task in r.get("tasks", [])
    }
    workers = {
        (kind, jid) for kind, jid in workers if jid not in ended and jid.split("_")[0] not in ended
    }
    slurm = {jid.split("_")[0] for kind, jid in workers if kind == "slurm"}
    queue = squeue_states(slurm, strict=strict)
    return sorted(
        (kind, jid)
        for kind, jid in workers
        if (kind == "local" and pid_alive(jid))
        or (
            kind == "slurm"
            and (queue.get(jid) or queue.get(jid.split("_")[0])) not in (None, "COMPLETING")
        )
    )


def submit_record(ex: ExecutorSpec, jobs: list[Any], run_ids: list[list[str]]) -> dict[str, Any]:
    """jobs.jsonl's line for a submission: each job and the runs (or workers) it holds, which
    queue.latest_jobs reads back to tell what is queued or running."""
    return {
        "event": "submit",
        "time": now(),
        "kind": ex.kind,
        "array_id": str(jobs[0].job_id).split("_")[0] if ex.kind == "slurm" else None,
        "tasks": [
            {"job_id": str(job.job_id), "run_ids": ids}
            for job, ids in zip(jobs, run_ids, strict=True)
        ],
        "executor": ex.model_dump(mode="json"),
        "host": os.uname().nodename,
        "python": sys.executable,
    }


def submit(
    spec: SweepSpec,
    root: Path,
    *,
    executor: dict[str, Any] | None = None,
    states: Iterable[str] = SUBMITTABLE,
    runs: Iterable[str] | None = None,
) -> Submission:
    """Submit every run not done (nor queued/running) as one job array; returns at once.
    runs: only these run ids (`sweep refine --submit`: its new runs, not other pending ones).

    Two submissions of one sweep at once are serialised (the sweep's lock), so the second
    sees the first's runs as queued and does not submit them again.
    """
    ex = apply_executor_overrides(spec.executor, executor)
    expansion = expand_points(spec)  # every point valid before anything is written
    check_tracking(expansion)
    with SweepDir((Path(root) / spec.name).resolve()).lock():
        return submit_prepared(prepare_expanded(spec, root, ex, expansion, states, runs=runs))


def check_tracking(expansion: Expansion) -> None:
    """tracking.wandb online or offline that W&B would refuse (bad WANDB_* variables; online:
    no credentials or no server) fails the submission, not every run; auto never does."""
    if not expansion.points:
        return
    tracking = expansion.points[0].config.tracking  # tracking is the same for every run
    if tracking.wandb in ("online", "offline"):
        from rhmscale.store.wandb_mirror import choose_mode

        choose_mode(tracking.wandb, tracking.connect_timeout)


def check_same_runs(sweep: SweepDir, expansion: Expansion) -> None:
    """A sweep folder holds one spec's runs: another spec of the same name is refused, or status
    would show one spec's runs while collect and fit read both. The same runs (the executor or
    tracking may differ) are the same sweep; so are more runs beside every recorded one: the
    sweep grown (`sweep refine`), whose spec then becomes the recorded one."""
    if not sweep.spec_file.exists():
        return
    recorded = {point.run_id for point in expand_points(load_sweep_spec(sweep)).points}
    given = {point.run_id for point in expansion.points}
    if not recorded <= given:
        grown = " (it was grown, e.g. by sweep refine)" if given < recorded else ""
        raise UserError(
            f"{sweep.path} holds sweep '{sweep.path.name}' from another spec{grown} "
            f"({len(given - recorded)} of this spec's {len(given)} runs are not in it, "
            f"{len(recorded - given)} of its {len(recorded)} runs not in this spec): give this "
            f"spec another name (fit both folders together: rhmscale fit A B), or go on with "
            f"the one it holds: rhmscale sweep submit {sweep.spec_file} --root "
            f"{sweep.path.parent}"
        )


def retry(path: Path, *, executor: dict[str, Any] | None = None) -> Submission:
    """Resubmit a sweep folder's RETRYABLE runs (its own sweep.yaml)."""
    path = Path(path).resolve()
    spec = load_sweep_spec(SweepDir(path))
    if path.name != spec.name:
        raise UserError(f"{path} holds sweep '{spec.name}': its folder must be named so")
    return submit(spec, path.parent, executor=executor, states=RETRYABLE)


def wait(submission: Submission) -> list[str]:
    """Wait for every job of a submission; the error messages of jobs that failed."""
    return wait_jobs(submission.jobs)


def wait_jobs(jobs: list[Any]) -> list[str]:
    """Wait for submitit jobs (a sweep's tasks, a study's workers); the errors of those that
    failed, one line each."""
    errors = []
    for job in jobs:
        try:
            job.result()
        except Exception as exc:  # noqa: BLE001 - reported, the runs hold the details
            errors.append(f"{job.job_id}: {job_error_line(str(exc)) or repr(exc)}")
    return errors


ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)\b")


def job_error_line(message: str) -> str:
    """A failed job's error in one line: the last "SomeError: ..." line of the traceback in
    its message (submitit's message ends with its log files' paths; a line of code is no
    error either), and its log (.err) file."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    errors = [line for line in lines if ERROR_LINE.match(line)]
    logs = [line.removeprefix("- ") for line in lines if line.endswith("_log.err")]
    said = errors[-1] if errors else (lines[-1] if lines else "")
    return f"{said[:300]}{f' (log: {logs[0]})' if logs else ''}"


def cancel(path: Path) -> tuple[list[str], str]:
    """Cancel the queued and running tasks of the sweep (whole arrays on SLURM).

    Returns the job ids cancelled and scancel's complaints, if any (e.g. a job that ended
    in the meantime).
    """
    sweep = SweepDir(Path(path))
    if not sweep.spec_file.exists():
        load_sweep_spec(sweep)  # raises the "not a sweep folder" error
    return cancel_jobs(sweep)


def cancel_jobs(sweep: SweepDir) -> tuple[list[str], str]:
    """cancel() for any folder with a jobs.jsonl (a sweep's, or a study's workers)."""
    Backlog(sweep).clear()  # first: no worker takes another run
    latest, _ = latest_jobs(sweep.read_job_lines())
    active = active_states(latest, strict=True)
    slurm_ids = sorted({latest[r].array_id for r in active if latest[r].kind == "slurm"})
    local = {pid for r in active if latest[r].kind == "local" for pid in latest[r].job_ids}
    local_ids = sorted(pid for pid in local if pid_alive(pid))
    complaints = ""
    if slurm_ids:
        if shutil.which("scancel") is None:
            raise UserError("scancel is not on PATH: cannot cancel SLURM jobs from here")
        out = subprocess.run(
            ["scancel", *slurm_ids],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        complaints = (out.stderr or "").strip() if out.returncode else ""
    for pid in local_ids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGTERM)
    cancelled = slurm_ids + local_ids
    if cancelled:
        sweep.append_job_line({"event": "cancel", "time": now(), "job_ids": cancelled})
    return cancelled, complaints
