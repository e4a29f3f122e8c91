"""What runs inside one array task: SweepTask trains the task's runs, unit by unit.

A unit is a lone run or the members of one pack, trained together by training.execute, which
skips a finished run and resumes an interrupted one from its checkpoint. SweepTask is a
submitit Checkpointable: on SIGUSR2 (preemption, time limit) the running unit checkpoints
after its current step, then submitit requeues the same task with the same arguments and
every run picks up from its last checkpoint.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import submitit

from rhmscale.store.folders import RunDir
from rhmscale.training.stop import requested as stop_requested

log = logging.getLogger("rhmscale.sweeps")


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


def limit_gpu_memory(share: float) -> None:
    """Tasks that share a GPU each take at most their share of its memory: one that needs
    more fails with torch's out-of-memory error, instead of starving the others."""
    if share >= 1:
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(share)


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


def record_failure(unit: list[dict[str, Any]], exc: BaseException) -> list[dict[str, Any]]:
    """execute raised before the runs could fail on their own (an input error, such as a GPU
    that is not there): every unfinished run of the unit gets a failed.json, so that `sweep
    status` shows the failure and its message, and the outcomes say so."""
    for item in unit:
        store = RunDir(Path(item["run_dir"]))
        if store.state() != "done":
            store.write_failed(item["run_id"], exc)
    error = f"{exc!r}"[:500]
    return [{"run_id": item["run_id"], "state": "failed", "error": error} for item in unit]


class SweepTask(submitit.helpers.Checkpointable):
    """One array task: runs its runs in sequence; requeued with the same arguments on USR2.

    items: [{"run_id", "config" (RunConfig as JSON), "run_dir",
    plus "pack" when packed: consecutive items of one pack train together, and "queue" when
    the packs are a queue shared by several local workers: each pack goes to the first worker
    that claims it}]. A run that fails leaves its failed.json and the task goes on with the
    next unit; the task raises at the end so the scheduler marks it failed.
    """

    gpu_share = 1.0  # of its GPU's memory (executor.tasks_per_gpu)

    def __init__(self, gpu_share: float = 1.0) -> None:
        self.gpu_share = gpu_share

    def __call__(self, items: list[dict[str, Any]], threads: int = 1) -> list[dict[str, Any]]:
        from rhmscale.config import RunConfig
        from rhmscale.training import compile_ahead

        requeue = guard_requeue_handler()
        should_stop = requeue_requested if requeue else None
        outcomes: list[dict[str, Any]] = []
        torch_ready = False
        for unit in units_of(items):
            if requeue and requeue_requested():
                requeue()
            queue = unit[0].get("queue")
            if queue and not RunDir(Path(unit[0]["run_dir"])).claim(queue):
                continue  # another worker of this submission took the pack
            if any(RunDir(Path(item["run_dir"])).state() != "done" for item in unit):
                # Before torch is imported (the first time) and the runs are set up: see why
                # in compile_ahead.
                configs = [RunConfig.model_validate(item["config"]) for item in unit]
                compile_ahead.start_early(configs)
            if not torch_ready:
                set_threads(threads)
                limit_gpu_memory(self.gpu_share)
                torch_ready = True
            try:
                outcomes += run_unit(unit, should_stop)
            except Exception as exc:  # noqa: BLE001 - recorded in the runs' failed.json
                if requeue_requested():
                    # Not a failure: the task is being requeued; the runs resume later.
                    for item in unit:
                        RunDir(Path(item["run_dir"])).failed.unlink(missing_ok=True)
                    log.warning("runs %s interrupted by a requeue (%r)", unit_ids(unit), exc)
                    if requeue:
                        requeue()
                    raise SystemExit(-1) from None
                outcomes += record_failure(unit, exc)
            if requeue and requeue_requested() and outcome_interrupted(outcomes):
                requeue()  # the runs checkpointed on the signal; requeue and exit
            if stop_requested():
                break  # SIGTERM/SIGINT (cancel, scancel): the runs checkpointed; no requeue
        failed = [o for o in outcomes if o["state"] == "failed"]
        if failed:
            raise RuntimeError(
                f"{len(failed)} of {len(items)} runs failed: "
                + "; ".join(f"{o['run_id']}: {o['error']}" for o in failed)
            )
        return outcomes

    # checkpoint() is Checkpointable's: DelayedSubmission(self, items, threads). The runs
    # resume from their own checkpoints/last.ckpt, so nothing else needs saving here.
