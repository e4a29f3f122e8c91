"""State of a sweep: run directories plus ONE `squeue` call (never `sacct` per job).

Per run, in order of precedence:
  done         result.json exists
  failed       failed.json exists (unless a retry is queued)
  running      its latest submission's task is RUNNING in squeue (or its local process lives)
  queued       that task is PENDING / REQUEUED / ... in squeue
  cancelled    its latest submission's task was cancelled by `sweep cancel`
  interrupted  a checkpoint exists but the run is neither done nor active
  pending      never ran (not yet submitted, or its task ended before the run started)

Submissions and cancellations are read from <sweep>/jobs.jsonl, one JSON object a line.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rhmscale.errors import UserError
from rhmscale.store.atomic import read_json
from rhmscale.store.folders import RunDir, SweepDir
from rhmscale.sweeps.spec import Point, SweepSpec, cell_key, expand_points, parse_spec

STATES = ("done", "running", "queued", "failed", "cancelled", "interrupted", "pending")
RUNNING = {"RUNNING", "CONFIGURING", "STAGE_OUT", "SIGNALING", "RESIZING"}
ENDED = {"COMPLETING"}  # the job's processes are gone; SLURM is cleaning up


def load_sweep_spec(sweep: SweepDir) -> SweepSpec:
    """The resolved spec a sweep folder was submitted with."""
    if not sweep.spec_file.exists():
        raise UserError(
            f"{sweep.path} is not a sweep folder (no sweep.yaml); submit a sweep first or give "
            "<root>/<sweep name>"
        )
    import yaml

    return parse_spec(yaml.safe_load(sweep.spec_file.read_text()) or {}, str(sweep.spec_file))


# --- queue --------------------------------------------------------------------------------


def squeue_states(job_ids: set[str], strict: bool = False) -> dict[str, str]:
    """task job id ("123_4" or "123") -> squeue state, for the user's jobs; ONE squeue call.

    Only array ids in job_ids are asked for; an empty dict when nothing is asked for.
    strict: raise UserError when squeue cannot answer (a submission must not guess which runs
    are still queued); otherwise the runs just show their file state.
    """
    if not job_ids:
        return {}
    if shutil.which("squeue") is None:
        if strict:
            raise UserError(
                "this sweep has SLURM jobs but squeue is not on PATH: cannot tell which runs are "
                "still queued; submit from a machine with SLURM"
            )
        return {}
    cmd = ["squeue", "-h", "-r", "-o", "%i|%T", "-u", getpass.getuser()]
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, check=False, timeout=60, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        if strict:
            raise UserError(f"squeue failed: {exc}") from None
        return {}
    if out.returncode != 0:
        if strict:
            raise UserError(f"squeue failed: {(out.stderr or out.stdout).strip()}")
        return {}
    states: dict[str, str] = {}
    for line in out.stdout.splitlines():
        jid, _, state = line.strip().partition("|")
        if jid.split("_")[0] in job_ids:
            states[jid] = state
    return states


def pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


@dataclass
class RunJob:
    kind: str
    job_id: str  # the task's job id ("123_4" on SLURM, a pid locally)
    array_id: str


def latest_jobs(records: list[dict[str, Any]]) -> tuple[dict[str, RunJob], set[str]]:
    """run_id -> its latest task, and the set of cancelled job ids (tasks or whole arrays)."""
    latest: dict[str, RunJob] = {}
    cancelled: set[str] = set()
    for rec in records:
        if rec.get("event") == "cancel":
            cancelled.update(str(j) for j in rec.get("job_ids", []))
            continue
        if rec.get("event") != "submit":
            continue
        kind = rec.get("kind", "slurm")
        for task in rec.get("tasks", []):
            jid = str(task["job_id"])
            job = RunJob(kind, jid, jid.split("_")[0])
            for rid in task["run_ids"]:
                latest[rid] = job
                cancelled.discard(jid)  # a resubmitted id is not the cancelled one
    return latest, cancelled


def active_states(latest: dict[str, RunJob], strict: bool = False) -> dict[str, str]:
    """run_id -> "running" | "queued" for runs whose latest task is alive."""
    slurm_arrays = {j.array_id for j in latest.values() if j.kind == "slurm"}
    queue = squeue_states(slurm_arrays, strict)
    alive: dict[str, bool] = {}
    active: dict[str, str] = {}
    for rid, job in latest.items():
        if job.kind == "slurm":
            state = queue.get(job.job_id) or queue.get(job.array_id)
            if state in RUNNING:
                active[rid] = "running"
            elif state is not None and state not in ENDED:
                active[rid] = "queued"
        elif job.kind == "local":
            if job.job_id not in alive:
                alive[job.job_id] = pid_alive(job.job_id)
            if alive[job.job_id]:
                active[rid] = "running"
    return active


# --- status -------------------------------------------------------------------------------


@dataclass
class RunStatus:
    run_id: str
    state: str
    cell: tuple[int, int, int, int]
    values: dict[str, Any]
    job_id: str | None = None
    message: str | None = None  # failed: the error; else None
    p: int = 0  # data.P


@dataclass
class SweepStatus:
    name: str
    path: Path
    runs: list[RunStatus]
    n_grid_points: int
    counts: Counter = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        cells: dict[str, Counter] = {}
        for run in self.runs:
            key = "v={} m={} s={} L={}".format(*run.cell)
            cells.setdefault(key, Counter())[run.state] += 1
        return {
            "name": self.name,
            "path": str(self.path),
            "n_runs": len(self.runs),
            "counts": {s: self.counts.get(s, 0) for s in STATES},
            "cells": {k: dict(v) for k, v in cells.items()},
            "runs": [
                {
                    "run_id": r.run_id,
                    "state": r.state,
                    "job_id": r.job_id,
                    "values": r.values,
                    **({"message": r.message} if r.message else {}),
                }
                for r in self.runs
            ],
        }


def failure_message(store: RunDir, log_lines: int = 5) -> str:
    """failed.json's error and message, else the tail of the run's log."""
    try:
        failed = read_json(store.failed)
        return f"{failed.get('error', 'error')}: {failed.get('message', '')}".strip()
    except (OSError, ValueError):
        pass
    try:
        lines = store.log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-log_lines:])


def run_states(
    sweep: SweepDir, points: list[Point], *, query_queue: bool = True, strict: bool = False
) -> list[RunStatus]:
    records = sweep.read_job_lines()
    latest, cancelled = latest_jobs(records)
    active = active_states(latest, strict) if query_queue else {}
    files = sweep.run_states([p.run_id for p in points])
    statuses = []
    for point in points:
        rid = point.run_id
        store = sweep.run_dir(rid)
        state = files[rid]
        job = latest.get(rid)
        message = None
        if state != "done":
            # failed.json outranks a running task (a retry deletes it when the run starts),
            # but not a queued one (a retry waiting to start).
            if rid in active and not (state == "failed" and active[rid] == "running"):
                state = active[rid]
            elif state == "failed":
                message = failure_message(store)
            elif job and (job.job_id in cancelled or job.array_id in cancelled):
                state = "cancelled"
        statuses.append(
            RunStatus(
                rid,
                state,
                cell_key(point.config),
                point.values,
                job and job.job_id,
                message,
                point.config.data.P,
            )
        )
    return statuses


def sweep_status(
    path: Path, spec: SweepSpec | None = None, *, query_queue: bool = True
) -> SweepStatus:
    sweep = SweepDir(Path(path))
    spec = spec or load_sweep_spec(sweep)
    expansion = expand_points(spec)
    runs = run_states(sweep, expansion.points, query_queue=query_queue)
    return SweepStatus(
        spec.name,
        sweep.path,
        runs,
        expansion.n_grid_points,
        Counter(r.state for r in runs),
    )


def status_table(
    status: SweepStatus, title: str | None = None, to_submit: set[str] | None = None
) -> Any:
    """A rich table: one row per grammar cell, one column per state.

    to_submit: the states a submission would take; given, the table is a plan (runs, the
    cell's P values, done, to submit) instead.
    """
    from rich.table import Table

    cells: dict[tuple[int, int, int, int], Counter] = {}
    p_values: dict[tuple[int, int, int, int], set[int]] = {}
    for run in status.runs:
        cells.setdefault(run.cell, Counter())[run.state] += 1
        p_values.setdefault(run.cell, set()).add(run.p)
    if to_submit is not None:
        shown = ["done", "to submit"]
        for counts in [*cells.values(), status.counts]:
            counts["to submit"] = sum(counts.get(s, 0) for s in to_submit)
    else:
        shown = [s for s in STATES if status.counts.get(s)] or ["pending"]
    table = Table(title=title or f"sweep {status.name}: {len(status.runs)} runs")
    for col in ("v", "m", "s", "L", "runs"):
        table.add_column(col, justify="right")
    if to_submit is not None:
        table.add_column("data.P", justify="left")
    for s in shown:
        table.add_column(s, justify="right")
    for cell in sorted(cells):
        counts = cells[cell]
        extra = [format_p(p_values[cell])] if to_submit is not None else []
        table.add_row(
            *map(str, cell),
            str(sum(counts.get(s, 0) for s in STATES)),
            *extra,
            *(str(counts.get(s, 0) or "") for s in shown),
        )
    table.add_section()
    extra = [""] if to_submit is not None else []
    table.add_row(
        "all",
        "",
        "",
        "",
        str(len(status.runs)),
        *extra,
        *(str(status.counts.get(s, 0)) for s in shown),
    )
    return table


def format_p(values: set[int]) -> str:
    ordered = sorted(values)
    if len(ordered) <= 4:
        return ", ".join(map(str, ordered))
    return f"{ordered[0]} .. {ordered[-1]} ({len(ordered)} values)"


def runs_table(status: SweepStatus):
    """One row per finished run: its grid values and final per-level accuracy (result.json)."""
    from rich.table import Table

    from rhmscale.store.atomic import read_json

    done = [r for r in status.runs if r.state == "done"]
    finals = {r.run_id: read_json(status.path / "runs" / r.run_id / "result.json") for r in done}
    depth = max((res["config"]["grammar"]["L"] for res in finals.values()), default=0)
    keys = sorted({k for r in done for k in r.values})
    table = Table(title=f"sweep {status.name}: {len(done)} finished runs")
    for name in ["run", *keys]:
        table.add_column(name.split(".")[-1], justify="right")  # grammar.v -> v
    metrics = [f"gen/acc_l{k}" for k in range(1, depth + 1)]
    metrics += ["gen/novel_frac", "gen/memorized_frac"]
    for name in metrics:
        table.add_column(name.removeprefix("gen/"), justify="right")
    for run in sorted(done, key=lambda r: [str(r.values.get(k)).zfill(12) for k in keys]):
        final = finals[run.run_id]["final"]
        cells = [f"{final[m]:.2f}" if m in final else "" for m in metrics]
        table.add_row(run.run_id[:8], *(str(run.values.get(k, "")) for k in keys), *cells)
    return table
