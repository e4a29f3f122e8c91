"""Which of a sweep's tasks are still alive: the jobs log plus ONE `squeue` call (no sacct).

<sweep>/jobs.jsonl holds one JSON object a line: a submission ({"event": "submit", "kind",
"tasks": [{"job_id", "run_ids"}]}), a cancellation ({"event": "cancel", "job_ids"}) or a
growth by `sweep refine` ({"event": "refine", ...}: what it added, read by people, not here).
A run's latest task is asked about: on SLURM through squeue, locally by its process id.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from rhmscale.errors import UserError

RUNNING = {"RUNNING", "CONFIGURING", "STAGE_OUT", "SIGNALING", "RESIZING"}
ENDED = {"COMPLETING"}  # the job's processes are gone; SLURM is cleaning up


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
    # Local workers that share a queue of packs all hold the run: any of them may train it.
    peers: tuple[str, ...] = ()

    @property
    def job_ids(self) -> tuple[str, ...]:
        return self.peers or (self.job_id,)


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
        holders: dict[str, list[str]] = {}
        for task in rec.get("tasks", []):
            jid = str(task["job_id"])
            cancelled.discard(jid)  # a resubmitted id is not the cancelled one
            for rid in task["run_ids"]:
                holders.setdefault(rid, []).append(jid)
        for rid, jids in holders.items():
            peers = tuple(jids) if len(jids) > 1 else ()
            latest[rid] = RunJob(kind, jids[0], jids[0].split("_")[0], peers)
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
            for jid in job.job_ids:
                if jid not in alive:
                    alive[jid] = pid_alive(jid)
            if any(alive[jid] for jid in job.job_ids):
                active[rid] = "running"
    return active
