"""Which of a sweep's tasks are still alive: the jobs log plus ONE `squeue` call (no sacct);
where SLURM runs them, and whether those nodes answer (one `sinfo` call, only when tasks run).

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
from dataclasses import dataclass, field
from typing import Any

from rhmscale.errors import UserError

RUNNING = {"RUNNING", "CONFIGURING", "STAGE_OUT", "SIGNALING", "RESIZING"}
ENDED = {"COMPLETING"}  # the job's processes are gone; SLURM is cleaning up


@dataclass
class QueueAnswer:
    """What ONE squeue call said of the asked arrays' tasks; `error` (the command and what it
    printed) when SLURM did not answer, and then nothing is known of them."""

    states: dict[str, str] = field(default_factory=dict)  # "123_4" -> RUNNING, PENDING ...
    nodes: dict[str, str] = field(default_factory=dict)  # a running task -> its node(s)
    held: dict[str, str] = field(default_factory=dict)  # a task SLURM holds -> its reason
    error: str | None = None


def ask_squeue(job_ids: set[str], strict: bool = False) -> QueueAnswer:
    """The user's tasks of the arrays in job_ids, their states and nodes; ONE squeue call
    (none when nothing is asked for).

    strict: raise UserError when squeue cannot answer (a submission must not guess which runs
    are still queued); otherwise the answer carries the error, for the caller to say.
    """
    if not job_ids:
        return QueueAnswer()
    if shutil.which("squeue") is None:
        if strict:
            raise UserError(
                "this sweep has SLURM jobs but squeue is not on PATH: cannot tell which runs are "
                "still queued; submit from a machine with SLURM"
            )
        return QueueAnswer(error="squeue is not on PATH")
    cmd = ["squeue", "-h", "-r", "-o", "%i|%T|%N|%r", "-u", getpass.getuser()]
    error = None
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, check=False, timeout=60, stdin=subprocess.DEVNULL
        )
        if out.returncode != 0:
            error = f"squeue failed (exit {out.returncode}): {(out.stderr or out.stdout).strip()}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        error = f"squeue failed: {exc}"
    if error is not None:
        if strict:
            raise UserError(error)
        return QueueAnswer(error=error)
    answer = QueueAnswer()
    for line in out.stdout.splitlines():
        jid, state, node, reason = (line.strip().split("|", 3) + ["", "", ""])[:4]
        if jid.split("_")[0] in job_ids:
            answer.states[jid] = state
            if node and state in RUNNING:
                answer.nodes[jid] = node
            if state == "PENDING" and is_held(reason):
                answer.held[jid] = reason
    return answer


def is_held(reason: str) -> bool:
    """A pending task that waits for `scontrol release`, not for resources: held by its user
    or an admin (JobHeldUser, JobHeldAdmin), or by SLURM itself after its launch failed on a
    node ("launch failed requeued held")."""
    return "held" in reason.lower()


def squeue_states(job_ids: set[str], strict: bool = False) -> dict[str, str]:
    """task job id ("123_4" or "123") -> squeue state (ask_squeue's; {} when it failed)."""
    return ask_squeue(job_ids, strict).states


def node_troubles(nodes: set[str]) -> dict[str, str]:
    """Of these nodes, those SLURM sees lost (not responding: state ending in "*"; down;
    failing) or draining, as node -> "state (reason)"; ONE sinfo call. A lost node's batch
    tasks are requeued by SLURM once it is marked DOWN (SlurmdTimeout); a draining node takes
    no new task. {} when sinfo cannot tell (the states of the runs say the rest)."""
    if not nodes or shutil.which("sinfo") is None:
        return {}
    cmd = ["sinfo", "-h", "-N", "-n", ",".join(sorted(nodes)), "-o", "%N|%T|%E"]
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, check=False, timeout=60, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    troubles: dict[str, str] = {}
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        node, _, rest = line.strip().partition("|")
        state, _, reason = rest.partition("|")
        lost = state.endswith("*") or state.startswith(("down", "fail"))
        if lost or state.startswith("drain"):
            why = f" ({reason})" if reason and reason != "none" else ""
            troubles[node] = ("lost: " if lost else "") + state + why
    return troubles


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


@dataclass
class Activity:
    """Which runs' latest tasks are alive, and where SLURM runs the tasks."""

    states: dict[str, str]  # run_id -> "running" | "queued"
    tasks: dict[str, str]  # the runs' SLURM tasks ("123_4") in squeue -> their state
    nodes: dict[str, str]  # a running SLURM task -> its node
    held: dict[str, str]  # a SLURM task held (it waits for `scontrol release`) -> the reason
    error: str | None  # SLURM did not answer (the command, its error): states unknown


def active_states(latest: dict[str, RunJob], strict: bool = False) -> dict[str, str]:
    """run_id -> "running" | "queued" for runs whose latest task is alive."""
    return activity(latest, strict).states


def activity(latest: dict[str, RunJob], strict: bool = False) -> Activity:
    """The runs whose latest tasks are alive (running or queued), the node of each running
    SLURM task, and squeue's error if it did not answer. Every task of a submission may train
    any of its runs (workers take them from the backlog): a run is running while one of them
    runs, queued while one waits."""
    slurm_arrays = {j.array_id for j in latest.values() if j.kind == "slurm"}
    answer = ask_squeue(slurm_arrays, strict)
    queue = answer.states
    alive: dict[str, bool] = {}
    active: dict[str, str] = {}
    for rid, job in latest.items():
        if job.kind == "slurm":
            states = {queue.get(jid) for jid in (*job.job_ids, job.array_id)} - {None}
            if states & RUNNING:
                active[rid] = "running"
            elif states - ENDED:
                active[rid] = "queued"
        elif job.kind == "local":
            for jid in job.job_ids:
                if jid not in alive:
                    alive[jid] = pid_alive(jid)
            if any(alive[jid] for jid in job.job_ids):
                active[rid] = "running"
    return Activity(active, answer.states, answer.nodes, answer.held, answer.error)
