"""Ctrl-C and SIGTERM: the command ends with one line on stderr, what was stopped and how to go
on, exit status 128 + the signal (130 for Ctrl-C, 143 for SIGTERM, as a shell reports a process
a signal ended), never a traceback.

A command that does not train (collect, fit, report, status, ...) stops where it is: SIGINT and
SIGTERM raise Interrupted in the main thread, between Python lines, and again every half second
while nothing handles it (library code swallowed one now and then). Files are written whole
(store/atomic.py removes one cut short), so nothing is half-written. Training catches both
signals itself for as long as it trains (training/stop.py: the runs checkpoint, then end
"interrupted"). A command that waits for its local workers stops them as `sweep cancel` does
and waits for their checkpoints (stopping).
"""

from __future__ import annotations

import contextlib
import os
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


AGAIN_S = 0.5  # a stop that library code swallowed is raised again this much later
_asked: list[int] = []  # the signal that asked the command to stop


def _stop(signum: int, frame: Any) -> None:
    """SIGINT or SIGTERM: raise Interrupted, and again every AGAIN_S (SIGALRM) while nothing
    handles it. Library code swallowed the one raise now and then (pandas, building an index
    while `fit` collects: the command ran on to its end, exit 0; 4 of 96 Ctrl-Cs): the next
    raise lands. While an except, finally or with-exit block handles the stop (waiting for
    the workers' checkpoints, cleaning up), none is raised into it."""
    if signum != signal.SIGALRM:
        _asked[:] = _asked or [signum]
    elif not _asked:
        return
    signal.setitimer(signal.ITIMER_REAL, AGAIN_S)
    if not isinstance(sys.exc_info()[1], KeyboardInterrupt):
        raise Interrupted(_asked[0])


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Within the block (a whole command), SIGINT and SIGTERM raise Interrupted (a
    KeyboardInterrupt) in the main thread. A signal ignored when the command started stays
    so."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _asked.clear()  # a command run before in this process (tests) asked for itself
    stops = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) != signal.SIG_IGN]
    previous = {s: signal.signal(s, _stop) for s in [*stops, signal.SIGALRM]}
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
    sys.stdout.flush()
    sys.stderr.flush()
    # Not sys.exit: the interpreter's teardown would meet the native threads the stop cut
    # short (pyarrow's, reading a parquet file) still alive, and abort the process ("terminate
    # called without an active exception", SIGABRT; apache/arrow#34314): measured in 1 of 24
    # Ctrl-Cs to `fit` while it collects. The command's blocks have all ended by now (files
    # are written whole or removed), so nothing is left to finalise.
    os._exit(128 + signum)


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
