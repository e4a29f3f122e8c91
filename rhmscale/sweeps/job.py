"""What runs inside one array task or local worker process: a SweepWorker, which takes runs
from the sweep's backlog (backlog.py) and trains them in slots (training.trainer) until none is
left that it can take. It is a submitit Checkpointable: on SIGUSR2 (preemption, time limit) its
runs checkpoint after their current step, then submitit requeues the same task with the same
arguments, and every run is resumed from its last checkpoint by the worker that takes it.
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
from rhmscale.training.stop import honour_stop_signals
from rhmscale.training.stop import requested as stop_requested

log = logging.getLogger("rhmscale.sweeps")
LINGER_POLL_S = 2.0  # how often a held worker with nothing to take looks again


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
# it is not pickled into the requeued task along with the SweepWorker).
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


def worker_id() -> str:
    """This worker's job id as the jobs log records it (SLURM "123_4", a local job's id)."""
    try:
        return str(submitit.JobEnvironment().job_id)
    except RuntimeError:  # not in a submitit job (the debug executor): this process
        return str(os.getpid())


def record_failure(entries: list[Any], exc: BaseException) -> list[dict[str, Any]]:
    """Training raised before the runs could fail on their own (an input error, such as a GPU
    that is not there): every unfinished run gets a failed.json, so that `sweep status` shows
    the failure and its message, and the outcomes say so."""
    for entry in entries:
        store = RunDir(entry.run_dir)
        if store.state() != "done":
            store.write_failed(entry.run_id, exc)
    error = f"{exc!r}"[:500]
    return [{"run_id": e.run_id, "state": "failed", "error": error} for e in entries]


class SweepWorker(submitit.helpers.Checkpointable):
    """One worker (a local process or a SLURM array task): takes runs from the sweep's backlog
    and trains them in `slots` slots of one shape, a slot that empties taking the next run of
    the shape, until no run it can take is left; then it takes another shape (compiled once)
    or ends. On SIGUSR2 (preemption, time limit) its runs checkpoint and the task is requeued
    with the same arguments; its runs are resumed by whichever worker takes them first. A run
    that fails leaves its failed.json; the worker raises at the end so the scheduler marks it
    failed."""

    gpu_share = 1.0  # of its GPU's memory (executor.tasks_per_gpu)

    def __init__(self, gpu_share: float = 1.0) -> None:
        self.gpu_share = gpu_share

    def __call__(self, sweep_path: str, slots: int, threads: int = 1) -> list[dict[str, Any]]:
        from rhmscale.store.folders import SweepDir
        from rhmscale.sweeps.backlog import Backlog

        requeue = guard_requeue_handler()
        should_stop = requeue_requested if requeue else None
        sweep = SweepDir(Path(sweep_path))
        backlog = Backlog(sweep)
        outcomes: list[dict[str, Any]] = []
        torch_ready = False
        # Stop signals are the worker's, not only its training's: submitit ignores SIGTERM, so
        # one that arrived between runs was lost and the worker took the next.
        with honour_stop_signals():
            while not stop_requested():
                if requeue and requeue_requested():
                    requeue()
                shape = backlog.richest_shape()
                taken = (shape is not None and backlog.take(shape)) or backlog.take()
                if not taken:
                    if self.leave(sweep, backlog):
                        break
                    continue
                first = [taken]
                while len(first) < slots and (more := backlog.take(taken[0].shape)):
                    first.append(more)
                if not torch_ready:
                    start_compile_early(first, len(first))
                    set_threads(threads)
                    limit_gpu_memory(self.gpu_share)
                    torch_ready = True
                outcomes += train_shape(backlog, first, should_stop)
                if requeue and requeue_requested():
                    requeue()  # the runs checkpointed on the signal; requeue and exit
        failed = [o for o in outcomes if o["state"] == "failed"]
        if failed:
            raise RuntimeError(
                f"{len(failed)} of {len(outcomes)} runs failed: "
                + "; ".join(f"{o['run_id']}: {o['error']}" for o in failed)
            )
        return outcomes

    @staticmethod
    def leave(sweep: Any, backlog: Any) -> bool:
        """Nothing to take: end, saying so in the jobs log under the sweep's lock, unless a
        submission added runs meanwhile (it holds the lock while it writes entries and asks
        which workers live, so none is left for a worker that ended unseen)."""
        from rhmscale.sweeps.backlog import held

        with sweep.lock():
            if (taken := backlog.take()) is not None:
                taken[1].release()
                return False
            if held(sweep):  # more runs are coming (sweep refine --until): wait for them
                time.sleep(LINGER_POLL_S)
                return False
            sweep.append_job_line({"event": "worker-exit", "job_id": worker_id()})
        return True

    # checkpoint() is Checkpointable's: DelayedSubmission(self, sweep_path, slots, threads).
    # The runs resume from their own checkpoints/last.ckpt, so nothing else needs saving.


def start_compile_early(first: list[Any], slots: int) -> None:
    """The first pack's compile helper, before torch is imported: see compile_ahead."""
    from rhmscale.config import RunConfig
    from rhmscale.training import compile_ahead

    configs = [RunConfig.model_validate(entry.config) for entry, _ in first]
    compile_ahead.start_early(configs, slots)


def train_shape(backlog: Any, first: list[Any], should_stop: Any) -> list[dict[str, Any]]:
    """Train the taken runs of one shape in slots, the slots that empty taking the backlog's
    next runs of that shape (set up ahead on another thread); each run that ends done or
    failed leaves the backlog."""
    from rhmscale.config import RunConfig
    from rhmscale.store.folders import RunDir
    from rhmscale.sweeps.backlog import held
    from rhmscale.training import stop
    from rhmscale.training.prefetch import Prefetch
    from rhmscale.training.runs import Runs

    runs = Runs()
    shape = first[0][0].shape
    entries = {}
    for entry, lock in first:
        entries[entry.run_id] = entry
        runs.add(RunConfig.model_validate(entry.config), RunDir(entry.run_dir), lock=lock)
    # Room in each slot for the largest training set of the shape waiting now.
    room = max(
        (RunConfig.model_validate(e.config).data.P for e in backlog.takeable(shape)), default=1
    )

    def take() -> Any:
        if (taken := backlog.take(shape)) is None:
            return None
        entry, lock = taken
        entries[entry.run_id] = entry
        return RunConfig.model_validate(entry.config), RunDir(entry.run_dir), lock

    def keep() -> bool:
        """An empty pack waits for more runs of its shape while the sweep is held, unless
        runs of other shapes wait (then it ends, and the worker takes those)."""
        return held(backlog.sweep) and all(e.shape == shape for e in backlog.takeable())

    prefetch = None
    try:
        runs.prepare()  # the fabric (a device that is not there raises), for every set-up
        prefetch = Prefetch(runs, take, keep=keep)
        with stop.honour_stop_signals():
            runs.train(False, None, stop.combined(should_stop), None, prefetch, len(first), room)
    except Exception as exc:  # noqa: BLE001 - recorded in the runs' failed.json
        if prefetch is not None:
            prefetch.stop()
        if requeue_requested():
            # Not a failure: the task is being requeued; the runs resume later.
            for entry in entries.values():
                RunDir(entry.run_dir).failed.unlink(missing_ok=True)
            log.warning("runs %s interrupted by a requeue (%r)", ", ".join(entries), exc)
            raise SystemExit(-1) from None
        unfinished = [e for r, e in entries.items() if r not in runs.outcomes]
        runs.close_logs()
        for lock in runs.locks.values():
            lock.release()
        return record_failure(unfinished, exc) + outcomes_of(runs, backlog)
    prefetch.stop()
    runs.interrupted(runs.unfinished())  # set up ahead, not trained: taken again later
    return outcomes_of(runs, backlog)


def outcomes_of(runs: Any, backlog: Any) -> list[dict[str, Any]]:
    """Each run's outcome; runs that ended done or failed leave the backlog."""
    outcomes = []
    for run_id, o in runs.outcomes.items():
        if o.state in ("done", "failed"):
            backlog.remove(run_id)
        outcomes.append(
            {"run_id": run_id, "state": o.state, **({"error": o.error} if o.error else {})}
        )
    return outcomes
