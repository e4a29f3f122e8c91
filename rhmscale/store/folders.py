"""Every path of the run store, and the state of a run derived from its files.

    <root>/<sweep>/sweep.yaml              the resolved spec
    <root>/<sweep>/jobs.jsonl              one line per submission or cancellation
    <root>/<sweep>/runs/<run_id>/          one run (RunDir): config.json, grammar.json,
        metrics.parquet, result.json | failed.json, checkpoints/last.ckpt, run.log, wandb/

State comes from files alone, so a re-submission can skip what is done and resume what is not:
result.json = done, failed.json = failed, a checkpoint only = interrupted, else pending.
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

RunState = Literal["done", "failed", "interrupted", "pending"]


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

    def write_failed(self, run_id: str, exc: BaseException) -> None:
        """failed.json: the error, its traceback, where and when (atomically)."""
        atomic_write_json(
            self.failed,
            {
                "run_id": run_id,
                "error": type(exc).__name__,
                "message": str(exc),
                "traceback": "".join(traceback.format_exception(exc)),
                "host": socket.gethostname(),
                "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            },
        )

    def state(self) -> RunState:
        """From one listdir of the folder (cheap enough for sweeps of thousands of runs)."""
        try:
            names = set(os.listdir(self.path))
        except (FileNotFoundError, NotADirectoryError):
            return "pending"
        if self.result.name in names:
            return "done"
        if self.failed.name in names:
            return "failed"
        if self.checkpoints.name in names and self.last_checkpoint.exists():
            return "interrupted"
        return "pending"


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
