"""The one reader for the files of the store: a run's, a sweep's, a study's.

A file in the store may be anything by the time it is read: a link to /dev/zero or
/dev/urandom (endless), a FIFO (a read blocks for ever), a sparse file of terabytes, binary
garbage, a write cut short. So before a byte is read the path must be a regular file (after
following a link) of at most its kind's size (SIZE_LIMITS), opened with O_NONBLOCK so that a
FIFO swapped in between the check and the open cannot block either; text must be UTF-8.
Anything else is a DamagedFile naming the file and why: a run's damaged file makes that run
corrupt (RunDir.damage), a sweep's or study's one ends the command with exit 2.
"""

from __future__ import annotations

import io
import json
import os
import stat
from contextlib import suppress
from pathlib import Path
from typing import Any, BinaryIO

from rhmscale.errors import DamagedFile, UserError

MB = 1024**2
GB = 1024**3
# The most each kind of file can hold, generous: each is far above what the largest run the
# config bounds allow (rhmscale.bounds) writes, and small enough that reading it whole costs
# a command no more than a few hundred MB. By file name, then by suffix.
SIZE_LIMITS: dict[str, tuple[int, str]] = {
    # A resolved config is a few KB (its tags and notes included).
    "config.json": (16 * MB, "a run's config"),
    # The final metrics, best step and config of a run: a few KB.
    "result.json": (64 * MB, "a result"),
    # An error message and its traceback.
    "failed.json": (16 * MB, "a failure record"),
    # One row per evaluation: at most MAX_EVALS (10,000) rows of ~100 numbers, ~8 MB.
    "metrics.parquet": (256 * MB, "a run's metrics"),
    # The resolved spec (config_io's MAX_YAML_CHARS bounds what it can parse anyway).
    "sweep.yaml": (16 * MB, "a sweep spec"),
    "study.yaml": (16 * MB, "a study spec"),
    # A line of a few hundred bytes per submission, cancellation or worker exit.
    "jobs.jsonl": (256 * MB, "a sweep's job list"),
    # Optuna's journal: ~200 bytes an entry, ~20 KB a trial (its evaluations reported as
    # intermediate values): 10,000 trials are ~200 MB. Optuna reads it line by line, so a
    # file of one endless line would be held whole: hence not more.
    "journal.log": (512 * MB, "a study journal"),
    # Weights and AdamW moments of one run: the largest model the bounds allow is a few GB.
    ".ckpt": (64 * GB, "a checkpoint"),
    # A run's W&B offline log (collect --from-wandb-offline): its history is a few MB.
    ".wandb": (512 * MB, "a W&B offline log"),
    # Backlog entries, worker records, hold.json: a config and a few fields.
    ".json": (16 * MB, "a record"),
}
LOG_TAIL_BYTES = 64 * 1024  # of run.log, only the end is read: a log may rightly be long

FILE_TYPES = {
    stat.S_IFDIR: "a folder",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
}


def size_limit(path: Path) -> tuple[int, str]:
    """(bytes, what the file is) for a store file, by its name, else its suffix."""
    path = Path(path)
    return SIZE_LIMITS.get(path.name) or SIZE_LIMITS.get(path.suffix) or (16 * MB, "a record")


def human_size(n: int) -> str:
    for unit, size in (("GB", GB), ("MB", MB), ("KB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}".replace(".0 ", " ")
    return f"{n} bytes"


def check_regular(path: Path, mode: int, size: int) -> None:
    """Raise DamagedFile unless stat's mode and size say a regular file within its bound."""
    if not stat.S_ISREG(mode):
        kind = FILE_TYPES.get(stat.S_IFMT(mode), "not a file")
        raise DamagedFile(path, f"is not a regular file ({kind})")
    limit, what = size_limit(path)
    if size > limit:
        raise DamagedFile(
            path, f"is {human_size(size)}, more than the {human_size(limit)} {what} can be"
        )


def open_checked(path: Path, *, bounded: bool = True) -> BinaryIO:
    """path opened for reading in binary, once it is known to be a regular file of at most
    its kind's size (any size: bounded=False, for a reader of its end). FileNotFoundError
    when it is missing; DamagedFile for anything else."""
    path = Path(path)
    try:
        # stat follows a link (one to /dev/zero is a character device), then the open does
        # not block on a FIFO put there since, and fstat checks what was opened.
        check_regular(path, *mode_size(os.stat(path), bounded))
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        if os.path.lexists(path):
            raise DamagedFile(path, "is a link to nothing") from None
        raise
    except OSError as exc:  # a loop of links, a name too long, no permission
        raise DamagedFile(path, f"cannot be read ({exc.strerror})") from None
    try:
        check_regular(path, *mode_size(os.fstat(fd), bounded))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def mode_size(status: os.stat_result, bounded: bool) -> tuple[int, int]:
    return status.st_mode, status.st_size if bounded else 0


def read_bytes(path: Path) -> bytes:
    """The whole file, checked first (open_checked); never more than its kind's bound, even
    when it grows while being read."""
    limit, _ = size_limit(path)
    with open_checked(path) as handle:
        try:
            data = handle.read(limit + 1)
        except OSError as exc:  # EIO from a failing disk, EISDIR on odd file systems
            raise DamagedFile(path, f"cannot be read ({exc.strerror})") from None
    if len(data) > limit:
        check_regular(path, stat.S_IFREG, len(data))
    return data


def decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DamagedFile(path, f"is not UTF-8 text (line {line}, byte {exc.start})") from None


def read_text(path: Path) -> str:
    return decode(path, read_bytes(path))


def read_json(path: Path) -> Any:
    """The file's JSON value; DamagedFile names the line where it stops being JSON."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DamagedFile(path, f"is not JSON (line {exc.lineno}: {exc.msg})") from None
    except RecursionError:
        raise DamagedFile(path, "is not JSON (nested too deep)") from None


def read_object(path: Path) -> dict[str, Any]:
    """read_json, when it is a JSON object (a record of the store always is)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise DamagedFile(path, f"is not a JSON object (it holds a {type(data).__name__})")
    return data


def read_tail(path: Path, size: int = LOG_TAIL_BYTES) -> str:
    """The last `size` bytes of a text file that may rightly be long (a log), as text; bytes
    that are not UTF-8 are replaced."""
    with open_checked(path, bounded=False) as handle:
        end = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, end - size))
        return handle.read(size).decode("utf-8", errors="replace")


def ends_with(path: Path, marker: bytes, window: int) -> bool:
    """Whether the file is a regular file of its kind's size that holds `marker` within its
    last `window` bytes (a file cut short by a crash or a full disk does not)."""
    with suppress(OSError, UserError), open_checked(path) as handle:
        end = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, end - window))
        return marker in handle.read(window)
    return False


def parquet_metadata(path: Path) -> Any:
    """pyarrow's FileMetaData of a parquet file: its schema and row count, from its footer
    alone (a few KB read, whatever the file's size)."""
    import pyarrow.parquet as pq

    with open_checked(path) as handle:
        try:
            return pq.read_metadata(handle)
        except Exception as exc:  # noqa: BLE001 - pyarrow's errors for any kind of garbage
            raise DamagedFile(path, f"is not a parquet file ({first_line(exc)})") from None


def read_parquet(path: Path) -> Any:
    """The parquet file as a pandas DataFrame."""
    import pandas as pd

    data = read_bytes(path)
    try:
        return pd.read_parquet(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - pyarrow's errors for any kind of garbage
        raise DamagedFile(path, f"is not a parquet file ({first_line(exc)})") from None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
