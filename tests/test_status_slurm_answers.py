"""What `sweep status` makes of SLURM's answers, with stand-in squeue and sinfo commands (no
cluster): SLURM that does not answer makes runs unknown, not interrupted, and says so; a lost or
draining node of the sweep's tasks is named; a running run says on which node it trains. The
same on the real three-node dev cluster: tests/test_slurm_nodes.py."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

from rhmscale.store.folders import SweepDir
from rhmscale.sweeps.grid import expand_points
from rhmscale.sweeps.spec import parse_spec, spec_to_yaml
from rhmscale.sweeps.status import sweep_status

BASE = {"grammar": {"v": 4, "m": 2, "L": 2}, "data": {"P": 8, "n_test": 4}}
RHMSCALE = str(Path(sys.executable).with_name("rhmscale"))


def fake(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def squeue_says(*tasks: tuple[str, str, str]) -> str:
    """A stand-in squeue listing these (task, state, node), in the format it is asked for."""
    with_node = "\\n".join("|".join(task) for task in tasks)
    without = "\\n".join("|".join(task[:2]) for task in tasks)
    return f"case \"$*\" in *%N*) printf '{with_node}\\n';; *) printf '{without}\\n';; esac\n"


def slurm_sweep(tmp_path: Path, monkeypatch, squeue: str, sinfo: str = "exit 1\n"):
    """A sweep of three runs, all in SLURM task 5_0 and 5_1: the first with a checkpoint (it
    was training), the second held by a worker of task 5_1 on node2 right now."""
    spec = parse_spec({"name": "s", "base": BASE, "grid": {"seed": [0, 1, 2]}})
    ids = [p.run_id for p in expand_points(spec).points]
    sweep = SweepDir(tmp_path / "s")
    sweep.path.mkdir()
    sweep.spec_file.write_text(spec_to_yaml(spec))
    tasks = [{"job_id": job, "run_ids": ids} for job in ("5_0", "5_1")]
    sweep.append_job_line({"event": "submit", "kind": "slurm", "array_id": "5", "tasks": tasks})
    for rid in ids[:2]:
        checkpoints = sweep.run_dir(rid).checkpoints
        checkpoints.mkdir(parents=True)
        with zipfile.ZipFile(checkpoints / "last.ckpt", "w") as z:
            z.writestr("data", b"x")
    line = "otherhost pid 7 job 5_1 node node2 training since 2026-12-08T00:00:00+00:00\n"
    sweep.run_dir(ids[1]).lock_file.write_text(line)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake(bin_dir, "squeue", squeue)
    fake(bin_dir, "sinfo", sinfo)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return sweep.path, ids


def status_cli(path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RHMSCALE, "sweep", "status", str(path), *options], capture_output=True, text=True
    )


def test_slurm_not_answering_makes_runs_unknown_and_says_why(tmp_path, monkeypatch):
    error = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)"
    path, ids = slurm_sweep(tmp_path, monkeypatch, f"echo '{error}' >&2\nexit 1\n")
    status = sweep_status(path)
    assert status.counts == {"unknown": 3}, status.counts  # not interrupted, not pending
    (note,) = status.notes
    assert note.startswith("SLURM did not answer (squeue failed (exit 1): " + error)
    out = status_cli(path)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "note: SLURM did not answer (squeue failed (exit 1): slurm_load_jobs error" in text
    assert "unknown" in text and "interrupted" not in text.replace("not interrupted", "")
    data = json.loads(status_cli(path, "--json").stdout)
    assert data["counts"]["unknown"] == 3 and data["counts"]["interrupted"] == 0
    assert data["notes"] == status.notes


def test_a_lost_node_is_named_and_a_running_run_says_where_it_trains(tmp_path, monkeypatch):
    squeue = squeue_says(("5_0", "RUNNING", "node1"), ("5_1", "RUNNING", "node2"))
    sinfo = 'case "$*" in *node1,node2*) echo "node1|mixed|none"; echo "node2|mixed*|none";; esac\n'
    path, ids = slurm_sweep(tmp_path, monkeypatch, squeue, sinfo)
    status = sweep_status(path)
    assert {r.run_id: r.state for r in status.runs}[ids[1]] == "running"
    assert [r.node for r in status.runs if r.state == "running"] == ["node2"]
    (note,) = status.notes
    assert note.startswith("node node2 is lost (mixed*): SLURM requeues its task(s) 5_1 ")
    out = status_cli(path, "--runs")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert f"running {ids[1]} on node2 (seed=1): otherhost pid 7 job 5_1 node node2" in text
    assert "note: node node2 is lost (mixed*)" in text


def test_a_holder_whose_task_was_requeued_elsewhere_no_longer_trains_the_run(tmp_path, monkeypatch):
    # Task 5_1 runs again, requeued on node3 after node2 died: the line its dead process left
    # on node2 (another host: no pid to ask) is stale, so the run waits to be taken again.
    squeue = squeue_says(("5_0", "RUNNING", "node1"), ("5_1", "RUNNING", "node3"))
    path, ids = slurm_sweep(tmp_path, monkeypatch, squeue, "echo\n")
    runs = {r.run_id: r for r in sweep_status(path).runs}
    assert runs[ids[1]].state == "queued" and runs[ids[1]].holder is None


def test_tasks_slurm_holds_are_named_with_the_command_that_releases_them(tmp_path, monkeypatch):
    # A node died as task 5_1 started there: SLURM requeued it held; it never starts by itself.
    held = ("5_1", "PENDING", "", "launch failed requeued held")
    squeue = squeue_says(("5_0", "PENDING", "", "Resources"), held)
    path, ids = slurm_sweep(tmp_path, monkeypatch, squeue, "echo\n")
    status = sweep_status(path)
    assert status.counts == {"queued": 3}, status.counts
    (note,) = status.notes  # 5_0 waits for resources: nothing to say of it
    assert note == (
        "SLURM holds task(s) 5_1 (launch failed requeued held): they start only once released: "
        "scontrol release 5_1"
    )
    out = status_cli(path)
    assert out.returncode == 0, out.stderr
    assert "scontrol release 5_1" in " ".join(out.stdout.split())
