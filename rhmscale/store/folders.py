"""Every path of the run store, and the state of a run derived from its files.

    <root>/<sweep>/sweep.yaml              the resolved spec
    <root>/<sweep>/jobs.jsonl              one line per submission or cancellation
    <root>/<sweep>/runs/<run_id>/          one run (RunDir): config.json, grammar.json,
        metrics.parquet, result.json | failed.json, checkpoints/last.ckpt, run.log, wandb/

State comes from files alone, so a re-submission can skip what is done and resume what is not:
  done         result.json (readable) and metrics.parquet (whole)
  corrupt      a file of a finished or interrupted run is damaged (damage() says which; every
               file is read through store.reading: type and size checked first): a retry sets
               the damaged files aside as <name>.damaged and trains the run again from its
               last good checkpoint, or from scratch
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

from rhmscale.errors import DamagedFile, UserError
from rhmscale.store.atomic import atomic_write, atomic_write_json
from rhmscale.store.lock import file_lock
from rhmscale.store.reading import (
    decode,
    ends_with,
    open_checked,
    parquet_metadata,
    read_bytes,
    read_object,
)

RunState = Literal["done", "corrupt", "diverged", "failed", "interrupted", "pending"]
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
        """What is damaged ("result.json is not a regular file (a FIFO)"), or None."""
        found = self.damaged_file()
        return found.reason if found else None

    def damaged_file(self) -> DamagedFile | None:
        """The first damaged file, or None: a config.json that is not a run's, a finished
        run's result.json or metrics.parquet (damaged, cut short, or holding text where
        numbers belong), a checkpoint that is not whole. Every file is read through
        store.reading (type and size checked first): this is the one judge of a run's files,
        for status, collect, fit and the retry that repairs them."""
        try:
            config = None
            if os.path.lexists(self.config):
                config = read_object(self.config)
                if not isinstance(config.get("run_id"), str) or "config" not in config:
                    raise DamagedFile(self.config, "is not a run's config (no run_id or config)")
            if os.path.lexists(self.result):
                self.check_result(config)
            elif self.last_checkpoint.exists() and not self.resumable_checkpoints():
                open_checked(self.last_checkpoint).close()  # says a FIFO or a device first
                raise DamagedFile(
                    self.last_checkpoint, "is cut short and no earlier checkpoint is whole"
                )
        except DamagedFile as exc:
            return exc
        except FileNotFoundError:  # removed while being looked at: judged by the next look
            return None
        return None

    def check_result(self, config: dict[str, Any] | None) -> None:
        """Raise DamagedFile unless result.json and metrics.parquet are a finished run's (config:
        config.json's content, None when there is none)."""
        result = read_object(self.result)
        final = result.get("final")
        if not isinstance(final, dict) or not all(map(is_number, final.values())):
            raise DamagedFile(self.result, "is not a result (its final metrics are not numbers)")
        if "config" in result and (config or {}).get("config") != result["config"]:
            # The metrics belong to the config the run trained on, not to an edited one.
            raise DamagedFile(self.result, f"records another config than {self.config.name} holds")
        try:
            check_metrics(self.metrics)
        except FileNotFoundError:
            raise DamagedFile(self.metrics, "is missing") from None

    def set_aside_damaged(self) -> list[str]:
        """Rename each damaged file to <name>.damaged (kept as evidence, out of every reader's
        way), then a result.json left without them, so that the run trains again from its
        checkpoint; what was done, one line each. Call while holding the run's lock, for a
        run that is not done."""
        said = []
        while (found := self.damaged_file()) and found.path.parent == self.path:
            if not os.path.lexists(found.path):  # missing metrics: the result goes below
                break
            said.append(f"{found.reason}: set aside as {set_aside(found.path).name}")
        if os.path.lexists(self.result):
            said.append(f"{self.result.name} set aside as {set_aside(self.result).name}")
        return said  # a damaged checkpoint: checkpoint.load_newest sets it aside

    def usable_log(self) -> Path:
        """run.log, once anything there that is not a regular file is set aside (opening a
        FIFO to append blocks for ever; a device or a folder fails)."""
        if self.log.exists() and not self.log.is_file():
            set_aside(self.log)
        return self.log

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
        """jobs.jsonl's records. A last line without its newline is a write cut short and is
        skipped; any other line that is not a JSON object is a UserError naming it."""
        try:
            data = read_bytes(self.jobs)
        except FileNotFoundError:
            return []
        except DamagedFile as exc:
            raise exc.with_remedy(
                "it only records submissions (the runs' own files say their state): move it "
                f"aside (mv {self.jobs} {self.jobs}.damaged) and run the command again"
            ) from None
        lines = data.split(b"\n")
        records = []
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(decode(self.jobs, line)) if line.strip() else {}
            except (DamagedFile, ValueError):
                record = None
            if isinstance(record, dict):
                records += [record] if record else []
            elif number < len(lines):  # not the torn last line
                raise UserError(
                    f"{self.jobs} line {number} is not a job record (not a JSON object in "
                    f"UTF-8): delete that line (sed -i '{number}d' {self.jobs}) and run the "
                    "command again; it only records a submission"
                )
        return records


def iter_run_dirs(path: Path) -> Iterator[RunDir]:
    """The run folders (those with a config.json) of a sweep folder or of a folder of runs."""
    path = Path(path)
    base = path / "runs" if (path / "runs").is_dir() else path
    for child in sorted(base.iterdir()):
        if (child / "config.json").exists():
            yield RunDir(child)


def read_json_object(path: Path) -> dict[str, Any] | None:
    """path's JSON object, or None when the file is missing or damaged (for records whose
    damage is handled as their absence; store.reading.read_object says why)."""
    try:
        return read_object(path)
    except (FileNotFoundError, DamagedFile):
        return None


def read_field(path: Path, key: str) -> Any:
    """path's JSON object's `key`, or None when the file is not a readable JSON object."""
    data = read_json_object(path)
    return data.get(key) if data else None


def check_metrics(path: Path) -> None:
    """Raise DamagedFile unless path is a parquet file of evaluations whose every column is
    a number (a text column would break the fit far from here). From its footer alone."""
    import pyarrow as pa

    meta = parquet_metadata(path)
    schema = meta.schema.to_arrow_schema()
    if meta.num_rows == 0 or "step" not in schema.names:
        raise DamagedFile(path, "holds no evaluations")
    numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean)
    wrong = [f.name for f in schema if not any(test(f.type) for test in numeric)]
    if wrong:
        raise DamagedFile(path, f"holds {', '.join(wrong)} that are not numbers")


def set_aside(path: Path) -> Path:
    """path renamed to <name>.damaged beside it (an earlier one of that name is replaced)."""
    aside = path.with_name(path.name + ".damaged")
    os.replace(path, aside)
    return aside


def is_number(value: Any) -> bool:
    """A metric value as written: a number, or None (JSON null, for NaN)."""
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))
