"""Every path of the run store, and the state of a run derived from its files.

    <root>/<sweep>/sweep.yaml              the resolved spec
    <root>/<sweep>/jobs.jsonl              one line per submission or cancellation
    <root>/<sweep>/runs/<run_id>/          one run (RunDir): config.json, grammar.json,
        metrics.parquet, result.json | failed.json, checkpoints/last.ckpt, run.log, wandb/

State comes from files alone, so a re-submission can skip what is done and resume what is not:
  done         result.json (readable) and metrics.parquet (whole)
  corrupt      a file of a finished or interrupted run is damaged (damage() says which): a
               retry repairs it from the last good checkpoint, or trains the run again
  diverged     failed.json says the loss or the weights went non-finite (a retry would too)
  failed       failed.json for any other reason
  interrupted  a checkpoint (last.ckpt, or prev.ckpt kept while the next is written)
  pending      none of these
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rhmscale.store.atomic import atomic_write, atomic_write_json
from rhmscale.store.lock import file_lock

RunState = Literal["done", "corrupt", "diverged", "failed", "interrupted", "pending"]
PARQUET_MAGIC = b"PAR1"  # a parquet file starts and ends with it
ZIP_END = b"PK\x05\x06"  # torch.save's zip ends with this record (and a short comment)


@dataclass(frozen=True)
class RunDir:
    """One run's folder: <root>/<sweep>/runs/<run_id>/, or any folder given to `run`."""

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
    def previous_checkpoint(self) -> Path:
        """The checkpoint before last.ckpt, kept until the next one is whole."""
        return self.checkpoints / "prev.ckpt"

    @property
    def lock_file(self) -> Path:
        return self.path / ".lock"

    @property
    def log(self) -> Path:
        return self.path / "run.log"

    @property
    def wandb(self) -> Path:
        return self.path / "wandb"

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """metrics.parquet: one row per evaluation, written atomically."""
        import pandas as pd

        frame = pd.DataFrame(rows)
        atomic_write(self.metrics, lambda handle: frame.to_parquet(handle, index=False))

    def write_failed(self, run_id: str, exc: BaseException, **fields: Any) -> None:
        """failed.json: the error, its traceback, where and when, and `fields` (a reason such
        as "diverged", the step), written atomically."""
        atomic_write_json(
            self.failed,
            {
                "run_id": run_id,
                "error": type(exc).__name__,
                "message": str(exc),
                "traceback": "".join(traceback.format_exception(exc)),
                "host": socket.gethostname(),
                "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                **fields,
            },
        )

    def state(self) -> RunState:
        """From one listdir of the folder and a look at the files that decide it (a few small
        reads: cheap enough for sweeps of thousands of runs)."""
        try:
            names = set(os.listdir(self.path))
        except (FileNotFoundError, NotADirectoryError):
            return "pending"
        if self.result.name in names:
            return "corrupt" if self.damage() else "done"
        if self.failed.name in names:
            return "diverged" if read_field(self.failed, "reason") == "diverged" else "failed"
        if self.checkpoints.name in names and self.resumable_checkpoints():
            return "interrupted"
        if self.checkpoints.name in names and self.damage():
            return "corrupt"
        return "pending"

    def resumable_checkpoints(self) -> list[Path]:
        """The checkpoints that are whole, newest first."""
        paths = (self.last_checkpoint, self.previous_checkpoint)
        return [path for path in paths if ends_with(path, ZIP_END, window=1024)]

    def damage(self) -> str | None:
        """What is damaged, or None: a finished run's result.json or metrics.parquet, a
        checkpoint that is not whole, a config.json that is not JSON."""
        if self.config.exists() and read_field(self.config, "run_id") is None:
            return f"{self.config.name} is not readable"
        if self.result.exists():
            result = read_json_object(self.result)
            final = result.get("final") if result else None
            if not isinstance(final, dict) or not all(map(is_number, final.values())):
                return f"{self.result.name} is not readable (its final metrics are not numbers)"
            if "config" in result and read_field(self.config, "config") != result["config"]:
                # The metrics belong to the config the run trained on, not to an edited one.
                return f"{self.config.name} differs from the config {self.result.name} recorded"
            if not ends_with(self.metrics, PARQUET_MAGIC, window=len(PARQUET_MAGIC)):
                return f"{self.metrics.name} is missing or cut short"
            return None
        if self.last_checkpoint.exists() and not self.resumable_checkpoints():
            return f"{self.last_checkpoint.name} is cut short and no earlier checkpoint is whole"
        return None

    def clean_temporaries(self) -> list[Path]:
        """Remove what an interrupted atomic write left behind (call while holding the run's
        lock: no other writer can be mid-write)."""
        stale = [*self.path.glob(".*.tmp"), *self.checkpoints.glob(".*.tmp")]
        stale += [p for p in [self.checkpoints / "next.ckpt"] if p.exists()]
        for path in stale:
            path.unlink(missing_ok=True)
        return stale


@dataclass(frozen=True)
class SweepDir:
    """One sweep's folder: <root>/<sweep name>/."""

    path: Path

    @property
    def spec_file(self) -> Path:
        return self.path / "sweep.yaml"

    @property
    def jobs(self) -> Path:
        return self.path / "jobs.jsonl"

    @property
    def runs(self) -> Path:
        return self.path / "runs"

    @property
    def submitit(self) -> Path:
        return self.path / "submitit"

    def run_dir(self, run_id: str) -> RunDir:
        return RunDir(self.runs / run_id)

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """The sweep's one lock: held while submitting and while appending to jobs.jsonl."""
        return file_lock(self.path / ".lock")

    def existing_runs(self) -> set[str]:
        """Names of the run folders that exist (one scandir)."""
        try:
            return {entry.name for entry in os.scandir(self.runs)}
        except FileNotFoundError:
            return set()

    def run_states(self, run_ids: list[str]) -> dict[str, RunState]:
        existing = self.existing_runs()
        return {rid: self.run_dir(rid).state() if rid in existing else "pending" for rid in run_ids}

    def append_job_line(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        with self.lock(), open(self.jobs, "a") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def read_job_lines(self) -> list[dict[str, Any]]:
        if not self.jobs.exists():
            return []
        records = []
        for line in self.jobs.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a torn last line is skipped
                records.append(json.loads(line))
        return records


def iter_run_dirs(path: Path) -> Iterator[RunDir]:
    """The run folders (those with a config.json) of a sweep folder or of a folder of runs."""
    path = Path(path)
    base = path / "runs" if (path / "runs").is_dir() else path
    for child in sorted(base.iterdir()):
        if (child / "config.json").exists():
            yield RunDir(child)


def read_json_object(path: Path) -> dict[str, Any] | None:
    """path's JSON object, or None when the file is not a readable JSON object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_field(path: Path, key: str) -> Any:
    """path's JSON object's `key`, or None when the file is not a readable JSON object."""
    data = read_json_object(path)
    return data.get(key) if data else None


def is_number(value: Any) -> bool:
    """A metric value as written: a number, or None (JSON null, for NaN)."""
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def ends_with(path: Path, marker: bytes, window: int) -> bool:
    """Whether the file holds `marker` within its last `window` bytes (a file cut short by a
    crash or a full disk does not)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - window))
            return marker in handle.read()
    except OSError:
        return False
