"""Ctrl-C and SIGTERM: the command ends with one line on stderr, what was stopped and how to go
on, exit status 128 + the signal (130 for Ctrl-C, 143 for SIGTERM, as a shell reports a process
a signal ended), never a traceback.

A command that does not train (collect, fit, report, status, ...) stops where it is: SIGTERM
raises in the main thread as Ctrl-C does, and its loops run in Python, between whose lines the
exception arrives. Files are written whole (store/atomic.py removes one cut short), so nothing
is half-written. Training catches both signals itself for as long as it trains
(training/stop.py: the runs checkpoint, then end "interrupted"). A command that waits for its
local workers stops them as `sweep cancel` does and waits for their checkpoints (stopping).
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

WORKERS_S = 120.0  # how long a stopped command waits for its local workers' checkpoints


class Interrupted(KeyboardInterrupt):
    """A stop signal, raised as Ctrl-C raises KeyboardInterrupt."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Within the block (a whole command), SIGTERM raises Interrupted in the main thread; SIGINT
    raises KeyboardInterrupt as always. A signal ignored when the command started stays so."""
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    ):
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interruption(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt that ended the command, if any: typer turns one into exit 130."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def report(exc: KeyboardInterrupt) -> NoReturn:
    """One line on stderr (the notes added on the way out say what was stopped), exit 128 +
    the signal."""
    signum = getattr(exc, "signum", signal.SIGINT)
    name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    what = "; ".join(getattr(exc, "__notes__", [])) or (
        f"{command()} stopped; nothing is half-written (files are written whole or not at all)"
    )
    print(f"interrupted ({name}): {what}", file=sys.stderr)
    sys.exit(128 + signum)


def command() -> str:
    """The command line as typed, to run again."""
    return shlex.join(["rhmscale", *sys.argv[1:]])


@contextlib.contextmanager
def stopping(
    kind: str, jobs: list[Any], stop_them: Callable[[], Any], status: str
) -> Iterator[None]:
    """While a command waits for the workers it started (submitit `jobs` of executor `kind`),
    Ctrl-C or SIGTERM stops the local ones with one SIGTERM each (`stop_them`, as cancel does;
    they ignore Ctrl-C: sweeps/executors.py), waits for their runs to checkpoint, and ends the
    command saying how to go on. SLURM jobs go on (`status`: the command that follows them); a
    debug worker runs in this process and caught the signal itself (training/stop.py)."""
    from rhmscale.training import stop

    try:
        yield
        if kind == "debug" and stop.requested():
            raise Interrupted(stop.signal_number())
    except KeyboardInterrupt as exc:
        if kind == "slurm":
            exc.add_note(f"stopped waiting; the jobs go on: {status}")
            raise
        if kind == "local" and jobs:
            stop_them()
            deadline = time.monotonic() + WORKERS_S
            while not all(job.done() for job in jobs) and time.monotonic() < deadline:
                time.sleep(0.2)
        left = sum(not job.done() for job in jobs) if kind == "local" else 0
        done = f"{left} worker(s) still stopping" if left else "the runs checkpointed and stopped"
        exc.add_note(f"{done}; go on with: {command()}")
        raise
