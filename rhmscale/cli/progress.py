"""A submission being waited for, shown as it goes: its runs ended out of all, by cell; what each
worker trains; an ETA from the rate so far. On a terminal a live table redrawn every few
seconds; elsewhere (a log, a CI job) one line when the counts change, at most every QUIET_S."""

from __future__ import annotations

import contextlib
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from rhmscale.periodic import repeating

POLL_S = 3.0
QUIET_S = 30.0
ENDED = ("done", "failed", "diverged", "corrupt", "cancelled")
JOB = re.compile(r" job (\S+)")


@dataclass(frozen=True)
class Snapshot:
    counts: Counter  # the submission's runs by state
    cells: list[tuple[str, int, int, int]]  # label, ended, running, total
    workers: dict[str, list[str]]  # worker (job id, else host and pid) -> labels it trains
    elapsed: float  # seconds since the watch began

    @property
    def ended(self) -> int:
        return sum(self.counts[state] for state in ENDED)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class Watch:
    """Looks at the runs `run_ids` of a sweep folder and its spec (status_of; the spec
    expanded once)."""

    def __init__(self, folder: Path, spec: Any, run_ids: list[str]) -> None:
        from rhmscale.store.folders import SweepDir
        from rhmscale.sweeps.grid import expand_points

        self.sweep = SweepDir(Path(folder))
        self.spec = spec
        self.expansion = expand_points(spec)
        self.run_ids = set(run_ids)
        self.started = time.monotonic()
        self.ended_at_start: int | None = None

    def look(self) -> Snapshot:
        from rhmscale.sweeps.status import status_of

        status = status_of(self.sweep, self.spec.name, self.expansion)
        varying = status.varying_keys()
        runs = [run for run in status.runs if run.run_id in self.run_ids]
        cells: dict[str, list[int]] = {}
        workers: dict[str, list[str]] = {}
        for run in runs:
            label = status.cell_label(dict(run.cell), varying)
            row = cells.setdefault(label, [0, 0, 0])
            row[0] += run.state in ENDED
            row[1] += run.state == "running"
            row[2] += 1
            if run.holder:
                found = JOB.search(run.holder)
                worker = found.group(1) if found else " ".join(run.holder.split()[:3])
                workers.setdefault(worker, []).append(f"{label} P={run.size}")
        counts = Counter(run.state for run in runs)
        snapshot = Snapshot(
            counts, [(k, *v) for k, v in cells.items()], workers, time.monotonic() - self.started
        )
        if self.ended_at_start is None:
            self.ended_at_start = snapshot.ended  # ended before this submission (none, mostly)
        return snapshot

    def eta(self, snap: Snapshot) -> str:
        """From the rate of the runs ended since the watch began; "" until a tenth of them
        ended (the runs of a pack end together: one early stop says little)."""
        new = snap.ended - (self.ended_at_start or 0)
        left = snap.total - snap.ended
        if new < max(1, 0.1 * (snap.total - (self.ended_at_start or 0))) or left <= 0:
            return ""
        return f"ETA ~{duration(snap.elapsed * left / new)} (from the {new} runs ended so far)"

    def summary(self, snap: Snapshot) -> str:
        """'12/40 runs ended (10 done, 2 failed), 3 running, 25 queued, ETA ~4 min ...'"""
        ended = [f"{snap.counts[s]} {s}" for s in ENDED if snap.counts[s]]
        parts = [f"{snap.ended}/{snap.total} runs ended" + (f" ({', '.join(ended)})" * bool(ended))]
        parts += [f"{snap.counts[s]} {s}" for s in ("running", "queued") if snap.counts[s]]
        others = snap.total - snap.ended - snap.counts["running"] - snap.counts["queued"]
        parts += [f"{others} waiting"] * bool(others)
        parts += [f"{duration(snap.elapsed)} in"] + ([eta] if (eta := self.eta(snap)) else [])
        return ", ".join(parts)

    def render(self, snap: Snapshot) -> Any:
        table = Table(show_edge=False)
        for column in ("cell", "ended", "running", "runs"):
            table.add_column(column, justify="left" if column == "cell" else "right")
        for label, ended, running, total in snap.cells:
            table.add_row(label, str(ended), str(running or ""), str(total))
        lines = [f"worker {w}: {shortened(labels)}" for w, labels in sorted(snap.workers.items())]
        return Group(Text(self.summary(snap)), table, *lines)


def shortened(labels: list[str], keep: int = 3) -> str:
    more = len(labels) - keep
    return ", ".join(labels[:keep]) + (f" and {more} more" if more > 0 else "")


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@contextlib.contextmanager
def watching(folder: Path, spec: Any, run_ids: list[str], console: Console) -> Iterator[None]:
    """Show the runs' progress while the body waits for them; a last summary line at the end."""
    watch = Watch(folder, spec, run_ids)
    live = Live(console=console, refresh_per_second=1, transient=True)
    said: dict[str, Any] = {"counts": None, "at": 0.0}

    def show() -> None:
        try:
            snap = watch.look()
        except Exception:  # noqa: BLE001 - a file mid-write: the next look will do
            return
        if console.is_terminal:
            live.update(watch.render(snap))
        elif snap.counts != said["counts"] and time.monotonic() - said["at"] >= QUIET_S:
            console.print(watch.summary(snap), markup=False)
            said.update(counts=snap.counts, at=time.monotonic())

    if console.is_terminal:
        live.start()
    try:
        with repeating(show, POLL_S, "rhmscale-progress"):
            yield
    finally:
        if console.is_terminal:
            live.stop()
        with contextlib.suppress(Exception):
            console.print(watch.summary(watch.look()), markup=False)
