"""A sweep's backlog: the runs submitted and not yet ended, which its workers take.

    <sweep>/backlog/<run_id>.json    {"run_id", "config", "run_dir", "shape", "cost"}

A submission writes one entry per run (atomically, under the sweep's lock); a worker takes a run
by taking its folder's lock (store.lock.try_lock: exclusive across processes and hosts, released
by the kernel when the worker dies, so a killed worker's run is taken again and resumed from its
checkpoint) and removes the entry when the run ends done or failed; an interrupted run keeps its
entry. So a run is never trained by two workers at once, a run that failed is not taken again
until it is resubmitted, and runs added while workers live are seen by them at their next look.
`sweep cancel` empties the backlog before it stops the workers.

A hold (<sweep>/hold.json, refreshed every HOLD_REFRESH_S by whoever holds it: `sweep refine
--until` between its rounds) keeps the sweep's workers alive, their packs compiled, while the
backlog is empty: the next round's runs go to them without a new start-up. A hold not refreshed
for HOLD_STALE_S (its holder died) is ignored.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rhmscale.periodic import repeating
from rhmscale.store.atomic import atomic_write_json
from rhmscale.store.folders import RunDir, SweepDir, read_json_object
from rhmscale.store.lock import Held, try_lock

ENDED = {"done", "failed", "diverged"}  # a run in these states leaves the backlog
HOLD_REFRESH_S, HOLD_STALE_S = 15.0, 120.0


@dataclass(frozen=True)
class Entry:
    run_id: str
    config: dict[str, Any]
    run_dir: Path
    shape: str  # config.pack_key: runs of one shape share a pack
    cost: float  # expected token-samples (sweeps.cost): the most expensive are taken first


class Backlog:
    """A sweep's backlog, as one process sees it. Entries are written whole (atomically) and
    rewritten only by a resubmission, so each look is one listing of the folder, and only the
    files that are new or rewritten since this object's last look are read: a worker looks
    every few seconds, at sweeps of thousands of runs, often on a network file system."""

    def __init__(self, sweep: SweepDir) -> None:
        self.sweep = sweep
        self.folder = sweep.path / "backlog"
        # file name -> (its version: inode, mtime; its entry). An atomic rewrite is a new inode.
        self._seen: dict[str, tuple[tuple[int, int], Entry | None]] = {}

    def put(self, items: list[dict[str, Any]]) -> None:
        """Entries for submitted runs (items: run_id, config, run_dir, shape, cost)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for item in items:
            keys = ("run_id", "config", "run_dir", "shape", "cost")
            atomic_write_json(self.folder / f"{item['run_id']}.json", {k: item[k] for k in keys})

    def entries(self) -> list[Entry]:
        """Every readable entry, the most expensive first (an unreadable one is skipped: it
        was cut short by a crash, and the run's resubmission writes it again)."""
        try:
            listing = [f for f in os.scandir(self.folder) if f.name.endswith(".json")]
        except FileNotFoundError:
            listing = []
        seen: dict[str, tuple[tuple[int, int], Entry | None]] = {}
        for item in listing:
            if item.name.startswith("."):
                continue  # an atomic write's temporary file
            try:
                version = (item.inode(), item.stat().st_mtime_ns)
            except FileNotFoundError:
                continue  # removed since the listing
            known = self._seen.get(item.name)
            seen[item.name] = (
                known if known and known[0] == version else (version, read_entry(item))
            )
        self._seen = seen
        found = [entry for _, entry in seen.values() if entry is not None]
        # Equal costs (runs that all reach max_steps): the larger training set first.
        return sorted(found, key=lambda e: (-e.cost, -e.config["data"]["P"]))

    def run_ids(self) -> set[str]:
        return {e.run_id for e in self.entries()}

    def remove(self, run_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.folder / f"{run_id}.json").unlink()

    def clear(self) -> list[str]:
        """Empty the backlog (sweep cancel); the run ids it held."""
        ids = sorted(self.run_ids())
        for run_id in ids:
            self.remove(run_id)
        return ids

    def takeable(self, shape: str | None = None) -> Iterator[Entry]:
        """Entries a worker may take (of one shape, or any), the most expensive first. (A run
        that ended leaves the backlog when it ends; one whose worker died just then is found
        and removed by take().)"""
        for entry in self.entries():
            if shape is None or entry.shape == shape:
                yield entry

    def take(self, shape: str | None = None) -> tuple[Entry, Held] | None:
        """The most expensive run nobody trains (of `shape`, or of any), with its folder's lock
        held; None when there is none."""
        for entry in self.takeable(shape):
            lock = try_lock(RunDir(entry.run_dir).lock_file)
            if isinstance(lock, str):
                continue  # another worker trains it
            if RunDir(entry.run_dir).state() in ENDED:  # ended while we looked
                lock.release()
                self.remove(entry.run_id)
                continue
            return entry, lock
        return None

    def richest_shape(self) -> str | None:
        """The shape with the most expected work left: a worker that starts, or whose shape
        ran out, takes that one. (Runs being trained count too: probing their locks could
        make a worker looking at that moment believe a free run taken.)"""
        totals: dict[str, float] = {}
        for entry in self.takeable():
            if RunDir(entry.run_dir).state() in ENDED:  # asked rarely: worth a look at each
                self.remove(entry.run_id)
                continue
            totals[entry.shape] = totals.get(entry.shape, 0.0) + entry.cost
        return max(totals, key=totals.__getitem__) if totals else None


def read_entry(path: os.PathLike) -> Entry | None:
    """A backlog file's entry; None when it is not a whole one."""
    data = read_json_object(Path(path))
    with contextlib.suppress(KeyError, TypeError, ValueError):
        return Entry(
            data["run_id"],
            data["config"],
            Path(data["run_dir"]),
            data["shape"],
            float(data["cost"]),
        )
    return None


def hold_file(sweep: SweepDir) -> Path:
    return sweep.path / "hold.json"


@contextlib.contextmanager
def hold(sweep: SweepDir) -> Iterator[None]:
    """Keep the sweep's workers alive while the block runs (see the module's docstring)."""

    def refresh() -> None:
        record = {"host": socket.gethostname(), "pid": os.getpid(), "at": time.time()}
        atomic_write_json(hold_file(sweep), record)

    try:
        with repeating(refresh, HOLD_REFRESH_S, "rhmscale-hold"):
            yield
    finally:
        hold_file(sweep).unlink(missing_ok=True)


def held(sweep: SweepDir) -> bool:
    """Whether a live hold keeps the workers."""
    data = read_json_object(hold_file(sweep))
    try:
        return time.time() - float(data["at"]) < HOLD_STALE_S
    except (TypeError, KeyError, ValueError):
        return False
