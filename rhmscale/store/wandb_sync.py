"""Uploading a sweep's or a study's offline W&B runs (`rhmscale sweep sync`, `tune sync`).

A run logged offline keeps W&B's folder `offline-run-<time>-<run id>` inside its run folder, one
more for each time it was resumed. `wandb sync` uploads such folders and leaves a marker beside
each log it uploaded (`run-<id>.wandb.synced`): what is synced is read from those markers, so a
sync is idempotent and goes on where a broken one stopped. The folders of one run are handed to
one `wandb sync` call in the order they were written (wandb then uploads them one after the other
into the same W&B run, as a resumed run). A run still training is left for a later sync: its log
is still growing.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rhmscale.store.folders import iter_run_dirs

ENDED = ("done", "failed", "diverged")  # a run whose W&B log will not grow any more
BATCH = 16  # runs per `wandb sync` process (each takes seconds to start)


@dataclass(frozen=True)
class OfflineRun:
    """One run's offline W&B folders, oldest first."""

    run_id: str
    folders: list[Path]
    state: str  # the run's state in the store (RunDir.state)

    @property
    def synced(self) -> bool:
        return all(is_synced(folder) for folder in self.folders)

    @property
    def ended(self) -> bool:
        return self.state in ENDED


def is_synced(folder: Path) -> bool:
    """Whether `wandb sync` uploaded this offline folder (its marker beside the log)."""
    logs = list(folder.glob("*.wandb"))
    return bool(logs) and all(log.with_suffix(".wandb.synced").exists() for log in logs)


def offline_runs(path: Path) -> list[OfflineRun]:
    """The runs of a sweep or study folder (or a folder of runs) that have offline W&B folders."""
    found = []
    for run_dir in iter_run_dirs(path):
        folders = sorted((run_dir.path / "wandb").glob("offline-run-*"))  # by time: the name
        if folders:
            found.append(OfflineRun(run_dir.path.name, folders, run_dir.state()))
    return found


def sync_command(folders: list[Path], dry_run: bool = False) -> list[str]:
    """wandb's own sync of these folders (already synced ones skipped)."""
    command = [sys.executable, "-m", "wandb", "sync", "--skip-synced", "--no-include-online"]
    return command + (["--dry-run"] if dry_run else []) + [str(f) for f in folders]


def batches(runs: list[OfflineRun], size: int = BATCH) -> Iterator[list[OfflineRun]]:
    for start in range(0, len(runs), size):
        yield runs[start : start + size]


SYNC_TIMEOUT_S = 1800  # one batch's upload; past it the batch counts as not uploaded


def run_wandb(command: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            command, capture_output=True, text=True, check=False, timeout=SYNC_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(command, 124, "", f"gave up after {SYNC_TIMEOUT_S} s")


def sync_batch(runs: list[OfflineRun]) -> list[str]:
    """Upload a batch of runs with one `wandb sync`; the run ids it left unsynced, each with
    wandb's last words, e.g. "3f2a...: wandb exited 1: ... 401 Unauthorized"."""
    result = run_wandb(sync_command([f for run in runs for f in run.folders]))
    left = [run for run in runs if not run.synced]
    if not left:
        return []
    said = (result.stderr or result.stdout or "").strip().splitlines()
    why = f"wandb exited {result.returncode}" + (f": {said[-1]}" if said else "")
    return [f"{run.run_id}: {why}" for run in left]
