"""The run store: one directory per run, every file written atomically.

State is derived from files alone, so a re-submission can skip what is done and resume what
is not: result.json = done, failed.json = failed, a checkpoint only = interrupted.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

RunState = Literal["done", "failed", "interrupted", "pending"]


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; set back at once (import time, one thread)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write through `write(file)` into a temporary file beside `path`, then rename into place.

    Readers never see a half-written file, even on a shared file system with many writers.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); give it the permissions of an ordinary new
        # file, so that results are readable by the group as the user's umask intends.
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


@dataclass(frozen=True)
class RunDir:
    """Paths of one run directory: <root>/<sweep>/runs/<run_id>/ or any folder given to `run`."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def grammar(self) -> Path:
        return self.path / "grammar.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.parquet"

    @property
    def result(self) -> Path:
        return self.path / "result.json"

    @property
    def failed(self) -> Path:
        return self.path / "failed.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def log(self) -> Path:
        return self.path / "run.log"

    @property
    def wandb(self) -> Path:
        return self.path / "wandb"

    def state(self) -> RunState:
        if self.result.exists():
            return "done"
        if self.failed.exists():
            return "failed"
        if self.last_checkpoint.exists():
            return "interrupted"
        return "pending"
