"""workers/<index>.json: which process runs a study's worker, written when it starts and removed
when it ends. jobs.jsonl names what was submitted (a SLURM array, a local controller's pid), but
not a worker that runs inside `tune submit` itself (the debug executor), nor one whose local
controller is gone; `tune cancel` and `tune status` find those here. A record left by a killed
worker names a dead process (or one started later under its pid), so it is ignored; one cut
short is named, never a crash.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rhmscale.store.atomic import atomic_write_json
from rhmscale.store.folders import read_json_object
from rhmscale.sweeps.queue import pid_alive

WORKERS = "workers"


def record_path(folder: Path, index: int) -> Path:
    return Path(folder) / WORKERS / f"{index}.json"


def process_start(pid: int) -> str | None:
    """When the process started (/proc/<pid>/stat, clock ticks since boot): tells a worker
    from a process that got its pid later. None where /proc cannot say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22; the name before ")" may hold spaces


@contextlib.contextmanager
def recorded(folder: Path, index: int) -> Iterator[None]:
    """Record this process as worker `index` while the block runs, with the executor that runs
    it (submitit says: slurm or local; else debug, inside the submitting process) and its job
    id there (a local one's is its controller's pid, what jobs.jsonl holds)."""
    path = record_path(folder, index)
    executor = os.environ.get("SUBMITIT_EXECUTOR") or "debug"
    job_id = {"slurm": "SLURM_JOB_ID", "local": "SUBMITIT_LOCAL_JOB_ID"}.get(executor)
    atomic_write_json(
        path,
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "start": process_start(os.getpid()),
            "executor": executor,
            "job_id": os.environ.get(job_id) if job_id else None,
        },
    )
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


@dataclass(frozen=True)
class LiveWorker:
    index: int
    pid: int
    executor: str  # slurm, local or debug
    job_id: str | None  # SLURM's, or a local controller's pid

    @property
    def name(self) -> str:
        return f"worker-{self.index}"


def live_workers(folder: Path) -> tuple[list[LiveWorker], list[Path]]:
    """The workers whose process runs on this host, and the records that cannot be read."""
    alive, damaged = [], []
    for path in sorted((Path(folder) / WORKERS).glob("*.json")):
        if not path.stem.isdigit():
            continue
        record = read_json_object(path)
        if record is None:
            damaged.append(path)
            continue
        pid = record.get("pid")
        if not isinstance(pid, int) or record.get("host") != socket.gethostname():
            continue
        if not pid_alive(str(pid)):
            continue
        if record.get("start") not in (None, process_start(pid)):
            continue  # the pid now belongs to another process
        executor, job_id = str(record.get("executor")), record.get("job_id")
        alive.append(LiveWorker(int(path.stem), pid, executor, job_id))
    return alive, damaged
