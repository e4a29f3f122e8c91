"""Exclusive POSIX locks on files, across processes and, on file systems with POSIX locks, across
hosts: `file_lock` waits and is re-entrant within a process (a caller holding a sweep's lock can
call code that takes it again: submitting, then appending the submission to the jobs log);
`try_lock` does not wait, and says who holds the lock (one writer per run folder)."""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from rhmscale.errors import DamagedFile
from rhmscale.store.reading import read_tail

_held: dict[Path, int] = {}  # lock files this process holds, and how many times


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    key = Path(path).resolve()
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    key.parent.mkdir(parents=True, exist_ok=True)
    with open(key, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        _held[key] = 1
        try:
            yield
        finally:
            del _held[key]
            fcntl.flock(handle, fcntl.LOCK_UN)


class Held:
    """A lock taken by try_lock; release() (or the end of the process) frees it."""

    def __init__(self, handle) -> None:
        self.handle = handle

    def mark(self, what: str) -> None:
        """Say what the holder does now in its line ("host pid N job J training since T"):
        a run taken and set up ahead waits for a slot; `sweep status` counts it as running
        only once it is marked "training"."""
        if not self.handle.closed:
            self.handle.seek(0)
            self.handle.truncate()
            self.handle.write(holder_line(what))
            self.handle.flush()

    def release(self) -> None:
        if not self.handle.closed:
            self.handle.truncate(0)  # nobody holds it now (holder() reads an empty file)
            self.handle.flush()
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()


def try_lock(path: Path) -> Held | str:
    """Take the lock on `path` now, writing who holds it into the file; if another process
    holds it, return that holder's line ("host pid 123 since <time>") instead."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - kept open while the lock is held
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        return holder
    handle.seek(0)
    handle.truncate()
    handle.write(holder_line())
    handle.flush()
    return Held(handle)


def holder_line(what: str = "") -> str:
    """'host pid N [job J] [node X] [what] since T': who holds a lock, and since when; the node
    is SLURM's name of it, inside a SLURM job."""
    since = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    job, node = job_id(), os.environ.get("SLURMD_NODENAME")
    parts = [socket.gethostname(), "pid", str(os.getpid())] + ["job", job] * bool(job)
    parts += ["node", node] * bool(node)
    return " ".join([*parts, *[what] * bool(what), "since", since]) + "\n"


def holder_field(line: str | None, key: str) -> str | None:
    """The job ("job") or SLURM node ("node") named in a holder line (holder_line); None if it
    names none."""
    words = (line or "").split()
    for i, word in enumerate(words[3:-1], start=3):
        if word == key:
            return words[i + 1]
    return None


def node_name() -> str:
    """Where this process runs: SLURM's name of its node inside a job (the nodes of a test
    cluster share one host name; on most clusters the two agree), else the host's name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def job_id() -> str | None:
    """The scheduler's id of this process's job: SLURM's (array task "123_4"), a local
    submitit job's, or None."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or env.get("SUBMITIT_LOCAL_JOB_ID")


def holder(path: Path) -> str | None:
    """Who holds (or last held, if it died without releasing) the lock on `path`, as written
    by try_lock; None when nobody does. Reads only: it never takes the lock."""
    try:
        return read_tail(Path(path), 4096).strip() or None  # one line; a FIFO is not waited for
    except (OSError, DamagedFile):
        return None
