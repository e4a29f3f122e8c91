"""The one lock: an exclusive POSIX lock on a file, across processes and, on file systems with
POSIX locks, across hosts. Re-entrant within a process, so a caller holding a sweep's lock can
call code that takes it again (submitting, then appending the submission to the jobs log)."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

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
