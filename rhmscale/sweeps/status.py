"""State of a sweep's runs, from the run directories plus ONE `squeue` call (queue.py), and one
`sinfo` call when tasks run: whether their nodes answer.

Per run, in order of precedence:
  done         result.json exists
  failed       failed.json exists (unless a retry is queued)
  running      its latest submission's task is RUNNING in squeue (or its local process lives)
  queued       that task is PENDING / REQUEUED / ... in squeue
  cancelled    its latest submission's task was cancelled by `sweep cancel`
  interrupted  a checkpoint exists but the run is neither done nor active
  unknown      its latest task is SLURM's and SLURM did not answer (squeue failed: slurmctld
               down, say): it may be running, queued or interrupted; the status's notes say why
  pending      never ran (not yet submitted, or its task ended before the run started); one
               whose task ended without the run recording an outcome (a full disk, a worker
               that died at start) says so, and `sweep retry` resubmits it ("unrecorded")

The notes also name a node that runs the sweep's tasks and is lost (not responding, down: SLURM
requeues its tasks once it marks it DOWN, and their runs resume from their checkpoints) or
draining (it takes no new task), and the queued tasks SLURM holds (`scontrol release` them).

Runs are counted per cell: the run's science keys (config.cell_of), so runs of one cell
differ only in data.P and seeds.
"""

from __future__ import annotations

import socket
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rhmscale.config import GRAMMAR_KEYS, SCIENCE, cell_of, key_roles
from rhmscale.errors import DamagedFile, UserError
from rhmscale.labels import cell_words
from rhmscale.store.folders import RunDir, SweepDir
from rhmscale.store.lock import holder, holder_field
from rhmscale.store.reading import read_object, read_tail, read_text
from rhmscale.sweeps.grid import Expansion, base_tree, expand_points
from rhmscale.sweeps.queue import (
    RUNNING,
    Activity,
    activity,
    latest_jobs,
    node_troubles,
    pid_alive,
)
from rhmscale.sweeps.spec import SweepSpec, parse_spec

STATES = (
    "done",
    "running",
    "queued",
    "failed",
    "diverged",
    "corrupt",
    "cancelled",
    "interrupted",
    "unknown",
    "pending",
)
CellKey = tuple[tuple[str, Any], ...]  # a cell's science keys and values, hashable


def load_sweep_spec(sweep: SweepDir) -> SweepSpec:
    """The resolved spec a sweep folder was submitted with."""
    if not sweep.spec_file.exists():
        raise UserError(
            f"{sweep.path} is not a sweep folder (no sweep.yaml); submit a sweep first or give "
            "<root>/<sweep name>"
        )
    from rhmscale.config_io import safe_load

    return parse_spec(safe_load(spec_text(sweep), str(sweep.spec_file)) or {}, str(sweep.spec_file))


def spec_text(sweep: SweepDir) -> str:
    """sweep.yaml's text; a damaged one is a UserError saying how to write it again."""
    try:
        return read_text(sweep.spec_file)
    except DamagedFile as exc:
        raise exc.with_remedy(
            f"move it aside (mv {exc.path} {exc.path}.damaged) and submit the sweep's spec "
            "again with the same --root (runs already done are kept and skipped)"
        ) from None


@dataclass
class RunStatus:
    run_id: str
    state: str
    cell: CellKey
    values: dict[str, Any]  # the grid values that made the run
    job_id: str | None = None
    message: str | None = None  # failed: the error; else None
    size: int = 0  # data.P
    holder: str | None = None  # running: which worker trains it, since when (the run's lock)
    node: str | None = None  # running: the SLURM node of the worker that trains it

    @property
    def submit_state(self) -> str:
        """The state that decides whether a submit or retry takes the run: "unrecorded" for a
        pending run whose job ended, else its state."""
        return "unrecorded" if self.state == "pending" and self.message else self.state

    @property
    def grammar(self) -> dict[str, Any]:
        """v, m, s, L."""
        cell = dict(self.cell)
        return {short: cell[key] for short, key in GRAMMAR_KEYS.items()}


@dataclass
class CellStatus:
    """The runs of one cell."""

    cell: dict[str, Any]
    runs: list[RunStatus]

    @property
    def counts(self) -> Counter:
        return Counter(run.state for run in self.runs)

    @property
    def sizes(self) -> list[int]:
        return sorted({run.size for run in self.runs})

    def count_in(self, run_ids: set[str]) -> int:
        return sum(run.run_id in run_ids for run in self.runs)


@dataclass
class SweepStatus:
    name: str
    path: Path
    runs: list[RunStatus]
    n_grid_points: int  # before identical points were collapsed
    counts: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)  # SLURM did not answer; a node lost ...

    def cells(self) -> list[CellStatus]:
        """The cells, ordered by v, m, s, L and then by the other keys that vary."""
        groups: dict[CellKey, list[RunStatus]] = {}
        for run in self.runs:
            groups.setdefault(run.cell, []).append(run)
        varying = self.varying_keys()

        def order(cell: dict[str, Any]) -> list[tuple[int, Any]]:
            values = [cell[key] for key in [*GRAMMAR_KEYS.values(), *varying]]
            return [(0, v) if isinstance(v, int | float) else (1, str(v)) for v in values]

        cells = [CellStatus(dict(key), runs) for key, runs in groups.items()]
        return sorted(cells, key=lambda c: order(c.cell))

    def varying_keys(self) -> list[str]:
        """Science keys besides v, m, s, L whose value differs between the sweep's cells."""
        values: dict[str, set[Any]] = {}
        for run in self.runs:
            for key, value in run.cell:
                values.setdefault(key, set()).add(value)
        grammar = set(GRAMMAR_KEYS.values())
        return [key for key, seen in values.items() if key not in grammar and len(seen) > 1]

    def cell_label(self, cell: dict[str, Any], varying: list[str] | None = None) -> str:
        """'v=16 m=4 s=2 L=3', plus the other keys that vary between cells (width=64)."""
        return cell_words(cell, self.varying_keys() if varying is None else varying)

    def finals(self) -> dict[str, dict[str, Any]]:
        """run_id -> the final metrics (result.json) of every finished run."""
        sweep = SweepDir(self.path)
        done = [run.run_id for run in self.runs if run.state == "done"]
        return {rid: read_object(sweep.run_dir(rid).result)["final"] for rid in done}

    def to_json(self) -> dict[str, Any]:
        varying = self.varying_keys()
        return {
            "name": self.name,
            "path": str(self.path),
            "n_runs": len(self.runs),
            "counts": {s: self.counts.get(s, 0) for s in STATES},
            "notes": self.notes,
            "cells": {self.cell_label(c.cell, varying): dict(c.counts) for c in self.cells()},
            "runs": [
                {
                    "run_id": r.run_id,
                    "state": r.state,
                    "job_id": r.job_id,
                    **({"node": r.node} if r.node else {}),
                    **({"held_by": r.holder} if r.holder else {}),
                    "values": r.values,
                    **({"message": r.message} if r.message else {}),
                }
                for r in self.runs
            ],
        }


def failure_message(store: RunDir, log_lines: int = 5) -> str:
    """failed.json's error and message, else the tail of the run's log."""
    try:
        failed = read_object(store.failed)
        return f"{failed.get('error', 'error')}: {failed.get('message', '')}".strip()
    except (OSError, DamagedFile) as exc:
        said = exc.reason if isinstance(exc, DamagedFile) else ""
    try:
        lines = read_tail(store.log).splitlines()
    except (OSError, DamagedFile):
        return said
    return "\n".join([said, *lines[-log_lines:]] if said else lines[-log_lines:])


def status_of(
    sweep: SweepDir,
    name: str,
    expansion: Expansion,
    *,
    query_queue: bool = True,
    strict: bool = False,
) -> SweepStatus:
    """The state of each point of an expanded spec. strict: raise when squeue cannot answer."""
    latest, cancelled = latest_jobs(sweep.read_job_lines())
    alive = activity(latest, strict) if query_queue else None
    active = alive.states if alive else {}
    unanswered = alive.error if alive else None
    files = sweep.run_states([p.run_id for p in expansion.points])
    # Every point starts from the same base, so its grid values other than seeds, size and
    # bookkeeping decide its cell: cell_of runs once per cell, not once per run (sweeps have
    # thousands of runs). A grid key that is a whole section counts in full.
    other = {key for key, role in key_roles().items() if role.role != SCIENCE}
    cells: dict[tuple[tuple[str, str], ...], CellKey] = {}
    runs = []
    for point in expansion.points:
        rid = point.run_id
        state = files[rid]
        job = latest.get(rid)
        message = None
        if state != "done":
            # failed.json outranks a running task (a retry deletes it when the run starts),
            # but not a queued one (a retry waiting to start).
            if rid in active and not (state == "failed" and active[rid] == "running"):
                # A live worker holds the run: running if it trains it (its folder's lock),
                # else queued for it.
                holder = (
                    training_holder(sweep.run_dir(rid), alive)
                    if alive and active[rid] == "running"
                    else None
                )
                # Taken and set up ahead, its lock not yet marked "training": still waiting.
                state = "running" if holder and " training since " in holder else "queued"
            elif state in ("failed", "diverged"):
                message = failure_message(sweep.run_dir(rid))
            elif state == "corrupt":
                message = sweep.run_dir(rid).damage()
            elif job and (job.job_id in cancelled or job.array_id in cancelled):
                state = "cancelled"
            elif unanswered and job and job.kind == "slurm" and state in ("interrupted", "pending"):
                state = "unknown"  # SLURM may still run or queue it: not interrupted for that
            elif state == "pending" and job and query_queue:
                message = unrecorded_message(sweep, rid, job.job_id)
        grid = tuple((k, repr(v)) for k, v in point.values.items() if k not in other)
        if grid not in cells:
            cells[grid] = tuple(cell_of(point.config).items())
        cell = cells[grid]
        job_id = job.job_id if job else None
        runs.append(
            RunStatus(
                rid, state, cell, point.values, job_id, message, point.config.data.P,
                holder if state == "running" else None,
                holder_field(holder, "node") if state == "running" else None,
            )
        )  # fmt: skip
    notes = [] if alive is None else slurm_notes(alive, runs)
    return SweepStatus(
        name, sweep.path, runs, expansion.n_grid_points, Counter(r.state for r in runs), notes
    )


def slurm_notes(alive: Activity, runs: list[RunStatus]) -> list[str]:
    """What SLURM's side adds to the runs' states: that it did not answer (and so which runs
    are unknown), the nodes of the sweep's running tasks that are lost or draining, and the
    queued tasks it holds (they never start by themselves)."""
    notes = []
    if error := alive.error:
        unknown = sum(run.state == "unknown" for run in runs)
        notes.append(
            f"SLURM did not answer ({error}): {unknown} run(s) whose task may still be queued "
            "or running are shown as unknown, not interrupted; ask again when SLURM answers "
            "(sinfo), and do not retry them before"
        )
    for node, trouble in sorted(node_troubles(set(alive.nodes.values())).items()):
        tasks = ", ".join(sorted(task for task, where in alive.nodes.items() if where == node))
        if trouble.startswith("lost: "):
            notes.append(
                f"node {node} is lost ({trouble.removeprefix('lost: ')}): SLURM requeues its "
                f"task(s) {tasks} once it marks the node DOWN, and their runs resume from their "
                "checkpoints on other nodes"
            )
        else:
            notes.append(f"node {node} is {trouble}: it takes no new task; {tasks} run on")
    for reason in sorted(set(alive.held.values())):
        tasks = sorted(task for task, why in alive.held.items() if why == reason)
        notes.append(
            f"SLURM holds task(s) {', '.join(tasks)} ({reason}): they start only once "
            f"released: scontrol release {','.join(tasks)}"
        )
    return notes


def unrecorded_message(sweep: SweepDir, run_id: str, job_id: str) -> str:
    """Why a submitted run whose job ended is still pending, and where to look."""
    log = sweep.run_dir(run_id).log
    where = log if log.exists() else sweep.submitit / f"{job_id}_*"
    return (
        f"its job {job_id} ended and the run recorded no outcome (a full disk? a worker that "
        f"died at start?): see {where}; `sweep retry` submits it again"
    )


def training_holder(store: RunDir, alive: Activity) -> str | None:
    """The lock holder's line ("host pid N job J node X since T") of a run being trained; None
    when nobody holds it, or when the line is left by a dead process: one of this host, or one
    whose SLURM task no longer runs where it did (its node was lost and SLURM requeued it: a
    process on another host cannot be asked)."""
    line = holder(store.lock_file)
    if not line:
        return None
    host, _, pid = line.split()[:3]
    if host == socket.gethostname() and not pid_alive(pid):
        return None
    job, node = holder_field(line, "job"), holder_field(line, "node")
    if job in alive.tasks and (
        alive.tasks[job] not in RUNNING or (node and alive.nodes.get(job) not in (None, node))
    ):
        return None
    return line


def sweep_status(
    path: Path, spec: SweepSpec | None = None, *, query_queue: bool = True
) -> SweepStatus:
    """A sweep folder's state; its spec is the folder's sweep.yaml unless given."""
    sweep = SweepDir(Path(path))
    spec = spec or load_sweep_spec(sweep)
    return status_of(sweep, spec.name, expand_points(spec), query_queue=query_queue)


@dataclass
class SweepContext:
    """What a report says about the sweep it comes from."""

    title: str
    counts: dict[str, int]  # runs by state
    spec_text: str  # the resolved sweep.yaml
    tracking: dict[str, Any]  # the runs' tracking settings (W&B project, entity, group)


def sweep_context(paths: Path | list[Path]) -> SweepContext | None:
    """Title, run counts, spec and tracking of one or several sweep folders (fitted together);
    None when one of them is a plain folder of runs. A run in two sweeps counts once, in its
    furthest state (done wins)."""
    paths = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
    sweeps = [SweepDir(path) for path in paths]
    if not all(sweep.spec_file.exists() for sweep in sweeps):
        return None
    specs = [load_sweep_spec(sweep) for sweep in sweeps]
    states: dict[str, str] = {}
    for path, spec in zip(paths, specs, strict=True):
        for run in sweep_status(path, spec).runs:
            if states.get(run.run_id) != "done":
                states[run.run_id] = run.state
    texts = [spec_text(sweep) for sweep in sweeps]
    if len(sweeps) > 1:
        texts = [f"# {sweep.spec_file}\n{text}" for sweep, text in zip(sweeps, texts, strict=True)]
    return SweepContext(
        ("Sweep " if len(specs) == 1 else "Sweeps ") + " + ".join(s.name for s in specs),
        dict(Counter(states.values())),
        "\n".join(texts),
        base_tree(specs[0])["tracking"],
    )
