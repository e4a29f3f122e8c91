"""The three places runs execute, behind submitit's one Executor interface.

slurm: one job array per submission (executor.batch()), the spec's resources as sbatch
options; debug: in this process; local: one process per task, each given its own GPU(s) when
the task asks for GPUs and there are any (gpus.py says which), started with Ctrl-C ignored
(the command that waits for them stops them: cli/interrupt.py). A submission the scheduler
refuses is a UserError that carries the scheduler's own message.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import submitit

from rhmscale.errors import UserError
from rhmscale.sweeps.gpus import as_indices, visible_gpus, worker_gpus
from rhmscale.sweeps.job import SweepWorker
from rhmscale.sweeps.slurm_checks import check_partition_gpus
from rhmscale.sweeps.spec import ExecutorSpec

NO_SLURM_HINT = (
    'set SLURM_CONF (for the dev cluster: eval "$(slurm/dev-cluster.sh env)", after '
    "slurm/dev-cluster.sh start), run on the cluster's login node, or use --executor local"
)


def require_slurm() -> None:
    """SLURM reachable before anything is written or submitted: sbatch on PATH, a configuration
    it can find, a controller that answers (one call of the sinfo beside sbatch, with a
    timeout). Else one line saying what is missing, where sbatch would print "Could not
    establish a configuration source" or wait a minute for a SLURM_CONF that is not there."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise UserError(
            "--executor slurm needs SLURM's sbatch on PATH, and it is not there; run on a "
            "cluster's login node, start the dev cluster (slurm/dev-cluster.sh start and export "
            "SLURM_CONF), or use --executor local"
        )
    conf = os.environ.get("SLURM_CONF")
    if conf and not Path(conf).is_file():
        raise UserError(f"no reachable SLURM: SLURM_CONF={conf} is not a file; {NO_SLURM_HINT}")
    sinfo = Path(sbatch).with_name("sinfo")  # the same installation's
    if not sinfo.is_file():
        return  # sbatch without its sinfo: sbatch decides
    try:
        out = subprocess.run(
            [str(sinfo), "-h", "-o", "%P"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        raise UserError(
            f"no reachable SLURM: sinfo did not answer within 20 s; {NO_SLURM_HINT}"
        ) from None
    if out.returncode != 0:
        where = f"SLURM_CONF={conf}" if conf else "SLURM_CONF unset, no /etc/slurm/slurm.conf"
        if not conf and Path("/etc/slurm/slurm.conf").is_file():
            where = "/etc/slurm/slurm.conf"
        last = (out.stderr.strip().splitlines() or ["no answer"])[-1]
        raise UserError(f"no reachable SLURM ({where}; sinfo: {last}); {NO_SLURM_HINT}")


def slurm_parameters(ex: ExecutorSpec, name: str) -> dict[str, Any]:
    """The spec's resources as submitit SlurmExecutor parameters (the arguments of its
    _make_sbatch_string): the one mapping that submissions and `sweep plan` both use."""
    from submitit.slurm.slurm import _convert_mem

    params: dict[str, Any] = {
        "job_name": f"rhm-{name}",
        "time": ex.timeout_min,
        "array_parallelism": ex.array_parallelism,
        # One process per array task; sbatch also refuses --gpus-per-task without a task count.
        "ntasks_per_node": 1,
    }
    for key in ("partition", "account", "qos", "constraint"):
        if value := getattr(ex, key):
            params[key] = value
    if ex.cpus_per_gpu is not None:
        params["cpus_per_gpu"] = ex.cpus_per_gpu
    else:
        params["cpus_per_task"] = ex.cpus
    if ex.mem_gb is not None:
        params["mem"] = _convert_mem(ex.mem_gb)
    if ex.mem_per_gpu_gb is not None:
        params["mem_per_gpu"] = _convert_mem(ex.mem_per_gpu_gb)
    params |= gpu_request(ex)
    if ex.sbatch:
        params["additional_parameters"] = {
            key.replace("-", "_").lstrip("_"): value for key, value in ex.sbatch.items()
        }
    return params


def gpu_request(ex: ExecutorSpec) -> dict[str, Any]:
    """GPUs as sbatch gets them: GPU shards when tasks share a GPU (SLURM grants no job both
    gpu and shard), else whole GPUs, of a type if one is named."""
    if ex.tasks_per_gpu > 1:
        return {"gres": f"shard:{ex.shards_per_gpu // ex.tasks_per_gpu}"}
    if not ex.gpus_per_task:
        return {}
    count = f"{ex.gpu_type}:{ex.gpus_per_task}" if ex.gpu_type else ex.gpus_per_task
    if ex.gpu_request == "gres":
        return {"gres": f"gpu:{count}"}
    return {"gpus_per_task": count}


def sbatch_lines(ex: ExecutorSpec, folder: Path, name: str, n_tasks: int) -> list[str]:
    """The #SBATCH lines that submitting n_tasks tasks to SLURM hands sbatch (an array when
    n_tasks > 1, as submitit submits it), built by submitit itself; needs no SLURM."""
    from submitit.slurm.slurm import _make_sbatch_string

    quiet_submitit()
    text = _make_sbatch_string(
        command="",
        folder=Path(folder).expanduser().absolute(),  # as submitit's Executor keeps it
        map_count=n_tasks if n_tasks > 1 else None,
        **slurm_parameters(ex, name),
    )
    return [line for line in text.splitlines() if line.startswith("#SBATCH")]


def quiet_submitit() -> None:
    """submitit warns that cpus_per_gpu needs gpus_per_task; SLURM also counts --gres=gpu."""
    warnings.filterwarnings("ignore", message='"cpus_per_gpu" requires to set "gpus_per_task"')


def preflight(ex: ExecutorSpec) -> None:
    """What can be known to fail before anything is written or submitted: SLURM reachable
    with the GPUs asked for; locally, visible GPUs that workers can be given."""
    if ex.kind == "slurm":
        require_slurm()
        check_partition_gpus(ex, gpu_request(ex))
    if ex.kind == "local" and ex.gpus_per_task and (gpus := visible_gpus()):
        worker_gpus(1, ex.gpus_per_task, gpus)  # enough of them for one task
        as_indices(tuple(gpus))  # named so that submitit can hand them on


def make_executor(ex: ExecutorSpec, folder: Path, name: str) -> Any:
    folder = Path(folder)
    preflight(ex)
    if ex.kind == "slurm":
        quiet_submitit()
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=ex.max_num_timeout)
        executor.update_parameters(**slurm_parameters(ex, name))
        return executor
    if ex.kind == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=ex.timeout_min)
        return executor
    return submitit.DebugExecutor(folder=folder)


def submit_workers(
    ex: ExecutorSpec, folder: Path, name: str, sweep_path: Path, n: int, slots: int
) -> list[Any]:
    """n workers (one array on SLURM), each taking the sweep's runs into `slots` slots."""
    worker = SweepWorker(gpu_share=1 / ex.tasks_per_gpu)
    return submit_calls(ex, folder, name, worker, [(str(sweep_path), slots)] * n)


def submit_calls(
    ex: ExecutorSpec,
    folder: Path,
    name: str,
    fn: Any,
    calls: list[tuple[Any, ...]],
    slots: list[int] | None = None,
) -> list[Any]:
    """One job per call, fn(*call, threads), as one array (SLURM) or one process each (local);
    sbatch's refusals as UserErrors carrying its message. `slots`: the calls' worker numbers,
    which decide their GPUs locally (default 0, 1, ...)."""
    executor = make_executor(ex, folder, name)
    threads = ex.cpus
    try:
        if ex.kind == "local":
            return submit_local(executor, ex, fn, calls, threads, slots)
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
    executor: Any,
    ex: ExecutorSpec,
    fn: Any,
    calls: list[tuple[Any, ...]],
    threads: int,
    slots: list[int] | None = None,
) -> list[Any]:
    """Local: one process per call; with GPUs, each its share of the visible ones (gpus.py),
    by its worker number (`slots`): a worker resubmitted alone gets the GPU it had, not the
    first one, where the workers still running are."""
    slots = list(range(len(calls))) if slots is None else slots
    gpus = visible_gpus() if ex.gpus_per_task else []
    n = max(slots, default=-1) + 1
    given = worker_gpus(n, ex.gpus_per_task, gpus) if gpus else [()] * n
    jobs = []
    for call, slot in zip(calls, slots, strict=True):
        if mine := given[slot]:
            executor.update_parameters(gpus_per_node=len(mine), visible_gpus=as_indices(mine))
        with ctrl_c_ignored():
            jobs.append(executor.submit(fn, *call, threads))
    return jobs


@contextlib.contextmanager
def ctrl_c_ignored() -> Iterator[None]:
    """Processes started in the block ignore SIGINT, and so do theirs: Ctrl-C at a terminal
    reaches its whole process group, where submitit's controller died of it with a traceback
    and SIGKILLed its worker a second later, before the runs had checkpointed. The command
    stops its workers itself, one SIGTERM each (cli/interrupt.py), as `sweep cancel` does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
