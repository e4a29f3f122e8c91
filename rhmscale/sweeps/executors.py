"""The three places runs execute, behind submitit's one Executor interface.

slurm: one job array per submission (executor.batch()), the spec's resources as sbatch
options; debug: in this process; local: one process per task, each given its own GPU(s) when
the task asks for GPUs and there are any. A submission the scheduler refuses is a UserError
that carries the scheduler's own message.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import submitit

from rhmscale.errors import UserError
from rhmscale.sweeps.grouping import Item, visible_gpu_count
from rhmscale.sweeps.job import SweepTask
from rhmscale.sweeps.spec import ExecutorSpec


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


def submit_tasks(ex: ExecutorSpec, folder: Path, name: str, tasks: list[list[Item]]) -> list[Any]:
    """One submitit job per task, each running SweepTask on the task's items."""
    task_fn = SweepTask(gpu_share=1 / ex.tasks_per_gpu)
    return submit_calls(ex, folder, name, task_fn, [(task,) for task in tasks])


def submit_calls(
    ex: ExecutorSpec, folder: Path, name: str, fn: Any, calls: list[tuple[Any, ...]]
) -> list[Any]:
    """One job per call, fn(*call, threads), as one array (SLURM) or one process each (local);
    sbatch's refusals as UserErrors carrying its message."""
    executor = make_executor(ex, folder, name)
    threads = ex.cpus_per_task
    try:
        if ex.kind == "local":
            return submit_local(executor, ex, fn, calls, threads)
        with executor.batch():
            jobs = [executor.submit(fn, *call, threads) for call in calls]
        return jobs
    except subprocess.CalledProcessError as exc:
        output = (
            exc.output.decode(errors="replace") if isinstance(exc.output, bytes) else exc.output
        )
        raise UserError(f"sbatch refused the submission: {(output or str(exc)).strip()}") from None
    except submitit.core.utils.FailedJobError as exc:
        raise UserError(f"sbatch refused the submission: {str(exc).strip()}") from None
    except FileNotFoundError as exc:
        raise UserError(f"cannot submit: {exc}") from None


def submit_local(
    executor: Any, ex: ExecutorSpec, fn: Any, calls: list[tuple[Any, ...]], threads: int
) -> list[Any]:
    """Local: one process per call; each gets its own GPU(s) when there are any."""
    n_gpus = visible_gpu_count() if ex.gpus_per_task else 0
    jobs = []
    for i, call in enumerate(calls):
        if n_gpus:
            first = (i * ex.gpus_per_task) % n_gpus
            gpus = tuple((first + k) % n_gpus for k in range(ex.gpus_per_task))
            executor.update_parameters(gpus_per_node=ex.gpus_per_task, visible_gpus=gpus)
        jobs.append(executor.submit(fn, *call, threads))
    return jobs
