"""Stop requests: SIGTERM or SIGINT (`timeout`, `kill`, `sweep cancel`, Ctrl-C, scancel) set a
flag that the training loop reads after every step and an evaluation before every denoiser call
(a stopped evaluation is redone on resume); the runs then checkpoint and return "interrupted". A
second Ctrl-C exits at once (the person at the terminal means it); a second SIGTERM is the same
request again: SIGTERM to a local worker's process group reaches it twice (directly and passed on
by its submitit controller), and SLURM's scancel signals every process of a job. The sender that
will not wait escalates with SIGKILL (SLURM after KillWait).

The flag is per process and stays set: a sweep task that was asked to stop does not start its
next runs. SIGUSR2 (preemption, time limit) is submitit's, handled by the sweep task. A process
started with SIGINT ignored keeps it so: local workers ignore Ctrl-C, which reaches the whole
process group; the command that started them stops them, once, with SIGTERM (cli/interrupt.py).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

_requested: dict[str, int] = {}  # "signal" -> the number that asked


def requested() -> bool:
    return "signal" in _requested


def signal_number() -> int:
    """The signal that asked to stop (requested() must be true)."""
    return _requested["signal"]


def _handler(signum: int, frame: Any) -> None:
    _requested.setdefault("signal", signum)
    if signum == signal.SIGINT:
        signal.signal(signum, signal.SIG_DFL)  # a second Ctrl-C ends the process at once


@contextlib.contextmanager
def honour_stop_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT ask the runs to checkpoint and stop (main thread
    only: elsewhere signals cannot be handled and the block changes nothing). SIGINT ignored
    stays ignored: the process was started not to take the terminal's Ctrl-C (a local
    worker; a shell's background job)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signals.append(signal.SIGINT)
    previous = {sig: signal.signal(sig, _handler) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if signal.getsignal(sig) is _handler:
                signal.signal(sig, handler)


def combined(should_stop: Callable[[], bool] | None) -> Callable[[], bool]:
    """A stop signal, or the caller's own request (a pending requeue)."""
    if should_stop is None:
        return requested
    return lambda: requested() or should_stop()
