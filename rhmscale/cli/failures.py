"""File-system failures the user can fix, as one line instead of a traceback.

A full disk or quota, a read-only file system, a folder that is not writable or a path through a
file: the command stops with `error: cannot write <path>: <reason>` and exit code 2. Any other
OSError (a programming error) keeps its traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rhmscale.errors import UserError

SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}  # whatever the file
PATHS = {  # only with a path to name
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.EISDIR,
    errno.ENAMETOOLONG,
}
STDOUT = "standard output"


def cannot_write(exc: OSError, path: Path | str | None = None) -> str | None:
    """The one-line message for `exc`, or None when it is not one the user can fix. `path`, what
    the command was writing (see `writing`), is named when the exception names no file (a
    failed write() names none) or names the hidden file written beside it (store.atomic)."""
    where = exc.filename if exc.filename is not None else path
    if path is not None and Path(where).name.startswith(f".{Path(path).name}."):
        where = path
    # A path with no such folder on the way, or in a file system that takes no new files
    # (/proc, /sys): fixable where the command says what it was writing.
    missing = exc.errno == errno.ENOENT and path is not None
    if exc.errno not in SPACE and (exc.errno not in PATHS or where is None) and not missing:
        return None
    reason = exc.strerror or os.strerror(exc.errno or 0)
    if missing and Path(where).parent.is_dir():
        reason = f"{Path(where).parent} takes no new files; write somewhere else"
    not_a_folder = exc.errno in (errno.ENOTDIR, errno.EEXIST) and where not in (None, STDOUT)
    if not_a_folder and (blocker := file_in_the_way(Path(where))) is not None:
        reason = f"{'it' if blocker == Path(where) else blocker} is a file, not a folder"
    return f"cannot write{f' {where}' if where is not None else ''}: {reason}"


def file_in_the_way(path: Path) -> Path | None:
    """The path itself or its nearest ancestor that exists as something other than a folder."""
    for candidate in (path, *path.parents):
        with contextlib.suppress(OSError):
            if candidate.exists():
                return None if candidate.is_dir() else candidate
    return None


@contextlib.contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """A UserError for a fixable OSError raised in the block; `path` is what it was writing
    (named when the error names no file)."""
    try:
        yield
    except OSError as exc:
        message = cannot_write(exc, path)
        if message is None:
            raise
        raise UserError(message) from exc


def check_output_file(path: Path) -> None:
    """An output file is written beside and renamed onto its path: refuse a path that is there
    as something other than a file (a folder, /dev/full, /dev/stdout), which it would replace."""
    if path.exists() and not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file"
        raise UserError(f"--output {path} is {kind}: give a file name")


class NamedStdout:
    """sys.stdout, but the OSErrors of its writes name it (a write error names no file), so
    that `rhmscale export > /full/disk/x.md` says what it could not write."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except OSError as exc:
            raise _named(exc) from None

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError as exc:
            raise _named(exc) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _named(exc: OSError) -> OSError:
    if exc.filename is not None:
        return exc
    return type(exc)(exc.errno, exc.strerror, STDOUT)


def silence_stdout() -> None:
    """After stdout failed: send what is left in its buffer to /dev/null, so that Python's
    exit does not print a second error for it."""
    stream = sys.stdout.stream if isinstance(sys.stdout, NamedStdout) else sys.stdout
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    sys.stdout = stream
