"""Dispatch a sweep through submitit: one job array per submission.

submit() expands the spec (validating every run), writes <root>/<name>/sweep.yaml, leaves out
runs that are done or still queued/running, groups the rest into tasks of `runs_per_task`
runs, submits them as ONE array (executor.batch()), and appends one line to jobs.jsonl under
a lock. Each task runs SweepTask: its runs one after another through pipeline.run.execute,
which skips a finished run and resumes an interrupted one from its checkpoint. SweepTask is a
submitit Checkpointable, so on SIGUSR2 (preemption, time limit) submitit requeues the same
task with the same arguments and every run picks up from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from rhmscale.errors import UserError
from rhmscale.store.atomic import atomic_write_text
from rhmscale.store.folders import RunDir, SweepDir
from rhmscale.sweeps.spec import ExecutorSpec, SweepSpec, expand_points, spec_to_yaml
from rhmscale.sweeps.status import load_sweep_spec, run_states

log = logging.getLogger("rhmscale.sweeps")

# States a plain `submit` resubmits; `retry` takes only the last three.
SUBMITTABLE = {"pending", "failed", "interrupted", "cancelled"}
RETRYABLE = {"failed", "interrupted", "cancelled"}


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# --- the job function ----------------------------------------------------------------------


def set_threads(default: int) -> int:
    """torch threads = SLURM_CPUS_PER_TASK (SLURM may not bind CPUs), else `default`."""
    import torch

    try:
        n = int(os.environ.get("SLURM_CPUS_PER_TASK") or default)
    except ValueError:
        n = default
    n = max(1, n)
    torch.set_num_threads(n)
    return n


# Set while submitit's USR2 handler checkpoints and requeues this process (module-level, so
# it is not pickled into the requeued task along with the SweepTask).
_REQUEUE: dict[str, float] = {}


def guard_requeue_handler() -> Callable[[], None] | None:
    """Defer submitit's SIGUSR2 requeue until the running run has checkpointed.

    The new handler only records the request; the training loop sees it after its current
    step (execute's should_stop), saves a checkpoint and returns "interrupted"; the task then
    calls the returned `requeue()`, which runs submitit's own handler (requeue and exit).
    `scontrol requeue` makes SLURM SIGTERM the whole job step at once: the scontrol child may
    die of it (submitit then raises CalledProcessError), which is a successful requeue.
    Returns None outside a submitit job (nothing to requeue).
    """
    import signal

    original = signal.getsignal(signal.SIGUSR2)
    if not callable(original):
        return None
    submitit_handler = getattr(original, "_rhmscale_wraps", original)

    def handler(signum: int, frame: Any) -> None:
        _REQUEUE.setdefault("since", time.time())

    def requeue() -> None:
        try:
            submitit_handler(signal.SIGUSR2, None)
        except subprocess.CalledProcessError as exc:
            if exc.returncode is not None and exc.returncode < 0:
                raise SystemExit(-1) from None
            raise
        raise SystemExit(-1)  # submitit's handler exits itself; never go on after a requeue

    handler._rhmscale_wraps = submitit_handler  # type: ignore[attr-defined]
    signal.signal(signal.SIGUSR2, handler)
    return requeue


def requeue_requested() -> bool:
    return "since" in _REQUEUE


def outcome_interrupted(outcomes: list[dict[str, Any]]) -> bool:
    return bool(outcomes) and outcomes[-1]["state"] == "interrupted"


def units_of(items: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Consecutive items of one pack form a unit; an unpacked run is a unit of its own."""
    units: list[list[dict[str, Any]]] = []
    for item in items:
        pack = item.get("pack")
        if pack is not None and units and units[-1][0].get("pack") == pack:
            units[-1].append(item)
        else:
            units.append([item])
    return units


def unit_ids(unit: list[dict[str, Any]]) -> str:
    return ", ".join(item["run_id"] for item in unit)


def run_unit(
    unit: list[dict[str, Any]], should_stop: Callable[[], bool] | None
) -> list[dict[str, Any]]:
    """A lone run, or the runs of one pack trained together; a run's own failure is in its
    failed.json and its outcome, the others go on."""
    from rhmscale.config import RunConfig
    from rhmscale.training import execute

    outcomes = execute(
        [RunConfig.model_validate(item["config"]) for item in unit],
        [Path(item["run_dir"]) for item in unit],
        should_stop=should_stop,
    )
    return [
        {"run_id": item["run_id"], "state": o.state, **({"error": o.error} if o.error else {})}
        for item, o in zip(unit, outcomes, strict=True)
    ]


class SweepTask(submitit.helpers.Checkpointable):
    """One array task: runs its runs in sequence; requeued with the same arguments on USR2.

    items: [{"run_id", "config" (RunConfig as JSON), "run_dir",
    plus "pack" when packed: consecutive items of one pack train together}]. A run that
    raises leaves its failed.json (execute writes it) and the task goes on with the next run;
    the task raises at the end so the scheduler marks it failed.
    """

    def __call__(self, items: list[dict[str, Any]], threads: int = 1) -> list[dict[str, Any]]:
        set_threads(threads)
        requeue = guard_requeue_handler()
        should_stop = requeue_requested if requeue else None
        outcomes: list[dict[str, Any]] = []
        for unit in units_of(items):
            if requeue and requeue_requested():
                requeue()
            try:
                outcomes += run_unit(unit, should_stop)
            except Exception as exc:  # noqa: BLE001 - recorded in failed.json by execute
                if requeue_requested():
                    # Not a failure: the task is being requeued; the runs resume later.
                    for item in unit:
                        RunDir(Path(item["run_dir"])).failed.unlink(missing_ok=True)
                    log.warning("runs %s interrupted by a requeue (%r)", unit_ids(unit), exc)
                    if requeue:
                        requeue()
                    raise SystemExit(-1) from None
                error = f"{exc!r}"[:500]
                outcomes += [
                    {"run_id": item["run_id"], "state": "failed", "error": error} for item in unit
                ]
            if requeue and outcome_interrupted(outcomes):
                requeue()  # the runs checkpointed on the signal; requeue and exit
        failed = [o for o in outcomes if o["state"] == "failed"]
        if failed:
            raise RuntimeError(
                f"{len(failed)} of {len(items)} runs failed: "
                + "; ".join(f"{o['run_id']}: {o['error']}" for o in failed)
            )
        return outcomes

    # checkpoint() is Checkpointable's: DelayedSubmission(self, items, threads). The runs
    # resume from their own checkpoints/last.ckpt, so nothing else needs saving here.


# --- preparing a submission ---------------------------------------------------------------


@dataclass
class Prepared:
    spec: SweepSpec
    sweep: SweepDir
    executor: ExecutorSpec
    tasks: list[list[dict[str, Any]]]  # items of each task
    states: dict[str, str]  # run_id -> state before submission
    n_runs: int

    @property
    def run_ids(self) -> list[str]:
        return [item["run_id"] for task in self.tasks for item in task]


def apply_executor_overrides(spec: ExecutorSpec, overrides: dict[str, Any] | None) -> ExecutorSpec:
    data = spec.model_dump()
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return ExecutorSpec.model_validate(data)
    except Exception as exc:  # pydantic ValidationError
        from pydantic import ValidationError

        from rhmscale.config_io import format_validation_error

        if isinstance(exc, ValidationError):
            raise UserError(f"executor: {format_validation_error(exc)}") from None
        raise


def local_workers(ex: ExecutorSpec) -> int:
    if ex.workers:
        return ex.workers
    if ex.gpus_per_task:
        n_gpus = visible_gpu_count()
        if n_gpus:
            return max(1, n_gpus // ex.gpus_per_task)
    return max(1, (os.cpu_count() or 1) // ex.cpus_per_task)


def visible_gpu_count() -> int:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return len([d for d in env.split(",") if d.strip()])
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        return 0


def group_tasks(items: list[dict[str, Any]], ex: ExecutorSpec) -> list[list[dict[str, Any]]]:
    if not items:
        return []
    if ex.pack:
        return group_packed_tasks(items, ex)
    if ex.kind == "local":
        # One task per worker (a local executor starts every job at once), runs dealt out.
        n = min(len(items), local_workers(ex))
        return [items[i::n] for i in range(n)]
    if ex.kind == "debug":
        return [items]
    size = ex.runs_per_task
    return [items[i : i + size] for i in range(0, len(items), size)]


def make_packs(items: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    """Runs of one shape (pack_key) in packs of up to `size`, filled across grammar cells.

    Packs of one shape are filled evenly (sizes differ by at most one), so that no pack is a
    lone straggler that keeps its GPU as long as a full one for a fraction of the work.
    """
    from rhmscale.config import RunConfig, pack_key

    shapes: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        shapes.setdefault(pack_key(RunConfig.model_validate(item["config"])), []).append(item)
    packs = []
    for members in shapes.values():
        n_packs = math.ceil(len(members) / size)
        packs += [members[i::n_packs] for i in range(n_packs)]
    return packs


def group_packed_tasks(items: list[dict[str, Any]], ex: ExecutorSpec) -> list[list[dict[str, Any]]]:
    """Each item gets its pack number; a task holds whole packs (one, except local/debug)."""
    packs = make_packs(items, ex.runs_per_task)
    for number, pack in enumerate(packs):
        for item in pack:
            item["pack"] = number
    if ex.kind == "slurm":
        return packs
    n = 1 if ex.kind == "debug" else min(len(packs), local_workers(ex))
    return [[item for pack in packs[i::n] for item in pack] for i in range(n)]


def prepare(
    spec: SweepSpec,
    root: Path,
    *,
    executor: dict[str, Any] | None = None,
    states: Iterable[str] = SUBMITTABLE,
    only: set[str] | None = None,
    query_queue: bool = True,
) -> Prepared:
    """Everything a submission needs, without submitting: the runs to submit, in tasks."""
    ex = apply_executor_overrides(spec.executor, executor)
    expansion = expand_points(spec)
    sweep = SweepDir((Path(root) / spec.name).resolve())
    statuses = run_states(sweep, expansion.points, query_queue=query_queue, strict=True)
    wanted = set(states)
    items = []
    for point, status in zip(expansion.points, statuses, strict=True):
        if status.state not in wanted or (only is not None and point.run_id not in only):
            continue
        items.append(
            {
                "run_id": point.run_id,
                "config": point.config.model_dump(mode="json"),
                "run_dir": str(sweep.run_dir(point.run_id).path.resolve()),
            }
        )
    return Prepared(
        spec=spec,
        sweep=sweep,
        executor=ex,
        tasks=group_tasks(items, ex),
        states={s.run_id: s.state for s in statuses},
        n_runs=len(expansion.points),
    )


# --- executors ------------------------------------------------------------------------------


def require_slurm() -> None:
    if shutil.which("sbatch") is None:
        raise UserError(
            "--executor slurm needs SLURM's sbatch on PATH, and it is not there; run on a "
            "cluster's login node, start the dev cluster (slurm/dev-cluster.sh start and export "
            "SLURM_CONF), or use --executor local"
        )


def slurm_parameters(ex: ExecutorSpec, name: str) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    for key in ("account", "qos", "constraint"):
        value = getattr(ex, key)
        if value:
            extra[key] = value
    for key, value in ex.sbatch.items():
        extra[key.replace("-", "_").lstrip("_")] = value
    params: dict[str, Any] = {
        "name": f"rhm-{name}",
        "timeout_min": ex.timeout_min,
        "cpus_per_task": ex.cpus_per_task,
        "slurm_array_parallelism": ex.array_parallelism,
    }
    if ex.partition:
        params["slurm_partition"] = ex.partition
    if ex.gpus_per_task:
        params["slurm_gpus_per_task"] = ex.gpus_per_task
    if ex.mem_gb is not None:
        params["mem_gb"] = ex.mem_gb
    if extra:
        params["slurm_additional_parameters"] = extra
    return params


def make_executor(ex: ExecutorSpec, folder: Path, name: str) -> Any:
    folder = Path(folder)
    if ex.kind == "slurm":
        require_slurm()
        executor = submitit.AutoExecutor(
            folder=folder, cluster="slurm", slurm_max_num_timeout=ex.max_num_timeout
        )
        executor.update_parameters(**slurm_parameters(ex, name))
        return executor
    if ex.kind == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=ex.timeout_min)
        return executor
    return submitit.DebugExecutor(folder=folder)


# --- submitting -----------------------------------------------------------------------------


@dataclass
class Submission:
    prepared: Prepared
    jobs: list[Any]  # submitit jobs, one per task
    record: dict[str, Any] | None  # the jobs.jsonl line, None when nothing was submitted

    @property
    def n_submitted(self) -> int:
        return len(self.prepared.run_ids)


def submit_prepared(prepared: Prepared) -> Submission:
    spec, sweep, ex = prepared.spec, prepared.sweep, prepared.executor
    sweep.path.mkdir(parents=True, exist_ok=True)
    resolved = spec.model_copy(update={"executor": ex})
    if not prepared.tasks:
        atomic_write_text(sweep.spec_file, spec_to_yaml(resolved))
        return Submission(prepared, [], None)
    for task in prepared.tasks:
        for item in task:
            Path(item["run_dir"]).mkdir(parents=True, exist_ok=True)
    executor = make_executor(ex, sweep.submitit, spec.name)
    fn = SweepTask()
    threads = ex.cpus_per_task
    try:
        if ex.kind == "local":
            jobs = submit_local(executor, ex, fn, prepared.tasks, threads)
        else:
            with executor.batch():
                pending = [executor.submit(fn, task, threads) for task in prepared.tasks]
            jobs = pending
    except subprocess.CalledProcessError as exc:
        output = (
            exc.output.decode(errors="replace") if isinstance(exc.output, bytes) else exc.output
        )
        raise UserError(f"sbatch refused the submission: {(output or str(exc)).strip()}") from None
    except submitit.core.utils.FailedJobError as exc:
        raise UserError(f"sbatch refused the submission: {str(exc).strip()}") from None
    except FileNotFoundError as exc:
        raise UserError(f"cannot submit: {exc}") from None
    record = {
        "event": "submit",
        "time": now(),
        "kind": ex.kind,
        "array_id": str(jobs[0].job_id).split("_")[0] if ex.kind == "slurm" else None,
        "n_runs": len(prepared.run_ids),
        "tasks": [
            {"job_id": str(job.job_id), "run_ids": [item["run_id"] for item in task]}
            for job, task in zip(jobs, prepared.tasks, strict=True)
        ],
        "executor": ex.model_dump(mode="json"),
        "host": os.uname().nodename,
        "python": sys.executable,
    }
    atomic_write_text(sweep.spec_file, spec_to_yaml(resolved))  # after sbatch accepted it
    sweep.append_job_line(record)
    return Submission(prepared, jobs, record)


def submit_local(
    executor: Any, ex: ExecutorSpec, fn: SweepTask, tasks: list[list[dict[str, Any]]], threads: int
) -> list[Any]:
    """Local: one process per worker; each worker gets its own GPU(s) when there are any."""
    n_gpus = visible_gpu_count() if ex.gpus_per_task else 0
    jobs = []
    for i, task in enumerate(tasks):
        if n_gpus:
            first = (i * ex.gpus_per_task) % n_gpus
            gpus = tuple((first + k) % n_gpus for k in range(ex.gpus_per_task))
            executor.update_parameters(gpus_per_node=ex.gpus_per_task, visible_gpus=gpus)
        jobs.append(executor.submit(fn, task, threads))
    return jobs


def submit(
    spec: SweepSpec,
    root: Path,
    *,
    executor: dict[str, Any] | None = None,
    states: Iterable[str] = SUBMITTABLE,
    only: set[str] | None = None,
) -> Submission:
    """Submit every run not done (nor queued/running) as one job array; returns at once.

    Two submissions of one sweep at once are serialised (a lock beside jobs.jsonl), so the
    second sees the first's runs as queued and does not submit them again.
    """
    sweep = SweepDir((Path(root) / spec.name).resolve())
    with sweep.lock():
        return submit_prepared(prepare(spec, root, executor=executor, states=states, only=only))


def wait(submission: Submission) -> list[str]:
    """Wait for every job of a submission; the error messages of jobs that failed."""
    errors = []
    for job in submission.jobs:
        try:
            job.result()
        except Exception as exc:  # noqa: BLE001 - reported, the runs hold the details
            errors.append(f"{job.job_id}: {str(exc).strip().splitlines()[-1] if str(exc) else exc}")
    return errors


def cancel(path: Path) -> tuple[list[str], str]:
    """Cancel the queued and running tasks of the sweep (whole arrays on SLURM).

    Returns the job ids cancelled and scancel's complaints, if any (e.g. a job that ended
    in the meantime).
    """
    import signal

    from rhmscale.sweeps.status import active_states, latest_jobs

    sweep = SweepDir(Path(path))
    if not sweep.spec_file.exists():
        load_sweep_spec(sweep)  # raises the "not a sweep folder" error
    latest, _ = latest_jobs(sweep.read_job_lines())
    active = active_states(latest, strict=True)
    slurm_ids = sorted({latest[r].array_id for r in active if latest[r].kind == "slurm"})
    local_ids = sorted({latest[r].job_id for r in active if latest[r].kind == "local"})
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
