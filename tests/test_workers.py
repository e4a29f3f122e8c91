"""Workers that pull runs from the sweep's backlog: one taker per run, the most expensive first,
a submission to a sweep whose workers live adds to their backlog instead of starting more,
cancel empties it, and status tells running from queued by who holds the run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rhmscale.store.folders import RunDir, SweepDir
from rhmscale.store.lock import holder
from rhmscale.sweeps.backlog import Backlog
from rhmscale.sweeps.dispatch import live_workers, prepare, submit
from rhmscale.sweeps.spec import parse_spec
from rhmscale.sweeps.status import sweep_status
from tests.test_sweep_spec import BASE, spec


def backlog_of(tmp_path, grid, **extra):
    s = spec(grid, **extra)
    prepared = prepare(s, tmp_path, executor={"kind": "debug"}, query_queue=False)
    sweep = SweepDir(tmp_path / "t")
    Backlog(sweep).put([item for task in prepared.tasks for item in task])
    return s, sweep, Backlog(sweep)


def test_each_run_is_taken_once_the_most_expensive_first(tmp_path):
    _, _, backlog = backlog_of(tmp_path, {"data.P": [8, 16, 32], "seed": [0, 1]})
    taken = []
    while (got := backlog.take()) is not None:
        taken.append(got)
    assert len(taken) == 6  # each once: the others' locks are held
    sizes = [entry.config["data"]["P"] for entry, _ in taken]
    assert sizes == sorted(sizes, reverse=True)
    assert all(holder(RunDir(e.run_dir).lock_file).split()[1] == "pid" for e, _ in taken)
    entry, lock = taken[0]
    lock.release()  # its worker died, say: the run is taken again (and resumed)
    assert holder(RunDir(entry.run_dir).lock_file) is None
    again, lock2 = backlog.take()
    assert again.run_id == entry.run_id
    lock2.release()
    for _, lock in taken[1:]:
        lock.release()


def test_ended_runs_leave_the_backlog_and_shapes_are_chosen_by_work_left(tmp_path):
    s, sweep, backlog = backlog_of(tmp_path, {"grammar.v": [4, 8], "data.P": [8, 16]})
    v8 = [e for e in backlog.entries() if e.config["grammar"]["v"] == 8]
    assert backlog.richest_shape() == v8[0].shape  # larger vocabulary: more work
    for entry in v8:
        RunDir(entry.run_dir).write_failed(entry.run_id, RuntimeError("boom"))
    assert backlog.richest_shape() != v8[0].shape
    assert {e.run_id for e in backlog.entries()} == {
        e.run_id for e in backlog.entries() if e.config["grammar"]["v"] == 4
    }


def test_a_look_at_the_backlog_reads_only_what_is_new_or_rewritten(tmp_path, monkeypatch):
    """A worker looks every few seconds: one listing, and only new or rewritten entries read."""
    import rhmscale.sweeps.backlog as backlog_module

    _, sweep, backlog = backlog_of(tmp_path, {"data.P": [8, 16, 32]})
    reads = []
    real = backlog_module.read_entry
    monkeypatch.setattr(backlog_module, "read_entry", lambda p: reads.append(p) or real(p))
    first = backlog.entries()
    assert len(first) == 3 and len(reads) == 3
    assert backlog.entries() == first and len(reads) == 3  # nothing new: nothing read
    entry = first[0]
    Backlog(sweep).put([{**entry.__dict__, "run_dir": str(entry.run_dir), "cost": 1.0}])
    Backlog(sweep).remove(first[1].run_id)
    (backlog.folder / "torn.json").write_text('{"run_id": "to')  # a crash mid-write
    again = backlog.entries()
    assert len(reads) == 5  # the rewritten entry and the torn file
    assert [e.run_id for e in again] == [first[2].run_id, entry.run_id]  # its new cost: last
    assert backlog.entries() == again and len(reads) == 5


def test_a_submission_while_workers_live_adds_to_their_backlog(tmp_path):
    """A living local worker (a stand-in process) takes the new runs: nothing is started."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        s = spec({"seed": [0, 1]}, executor={"kind": "local"})
        sweep = SweepDir(tmp_path / "t")
        sweep.path.mkdir(parents=True)
        sweep.append_job_line(
            {
                "event": "submit",
                "kind": "local",
                "tasks": [{"job_id": str(sleeper.pid), "run_ids": []}],
            }
        )
        assert live_workers(sweep) == [("local", str(sleeper.pid))]
        submission = submit(s, tmp_path)
        assert submission.jobs == [] and submission.record["adopted"]
        assert submission.record["tasks"][0]["job_id"] == str(sleeper.pid)
        assert len(Backlog(sweep).entries()) == 2
        assert sweep_status(sweep.path, s).counts == {"queued": 2}  # held by nobody yet
        # The worker takes one and sets it up ahead: still queued, waiting for a slot.
        entry, lock = Backlog(sweep).take()
        assert sweep_status(sweep.path, s).counts == {"queued": 2}
        # It takes a slot (its lock says so): running, and who trains it is said.
        lock.mark("training")
        status = sweep_status(sweep.path, s)
        assert status.counts == {"queued": 1, "running": 1}
        (running,) = [r for r in status.runs if r.state == "running"]
        assert running.run_id == entry.run_id and f"pid {os.getpid()}" in running.holder
        assert " training since " in running.holder
        lock.release()
        # It ends (its exit line): the next submission starts workers of its own.
        sweep.append_job_line({"event": "worker-exit", "job_id": str(sleeper.pid)})
        assert live_workers(sweep) == []
    finally:
        sleeper.kill()


def test_cancel_empties_the_backlog(tmp_path):
    from rhmscale.sweeps.dispatch import cancel

    s, sweep, backlog = backlog_of(tmp_path, {"seed": [0, 1, 2]})
    (sweep.spec_file).write_text(s.model_dump_json())  # any spec file: cancel checks it exists
    cancel(sweep.path)
    assert backlog.entries() == []


@pytest.mark.slow
def test_runs_added_while_a_worker_trains_their_shape_join_its_slots(tmp_path):
    """A worker trains two runs; two more of their shape submitted meanwhile take the slots
    that empty, in the same pack (no second start-up), and the worker then ends."""
    import threading
    import time

    from rhmscale.sweeps import job

    base = {**BASE, "train": {**BASE["train"], "max_steps": 300}, "eval": {"n_evals": 2}}
    s = parse_spec({"name": "t", "base": base, "grid": {"seed": [0, 1]}})
    later = parse_spec({"name": "t", "base": base, "grid": {"seed": [0, 1, 2, 3]}})
    prepared = prepare(s, tmp_path, executor={"kind": "debug"}, query_queue=False)
    sweep = SweepDir(tmp_path / "t")
    Backlog(sweep).put([item for task in prepared.tasks for item in task])
    grown = prepare(later, tmp_path, executor={"kind": "debug"}, query_queue=False)
    added = [i for t in grown.tasks for i in t if i["run_id"] not in prepared.run_ids]
    outcomes = []
    worker = threading.Thread(target=lambda: outcomes.extend(job.SweepWorker()(str(sweep.path), 2)))
    worker.start()
    deadline = time.monotonic() + 120
    while not any(RunDir(Path(i["run_dir"])).log.exists() for t in prepared.tasks for i in t):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    Backlog(sweep).put(added)
    worker.join(timeout=300)
    assert sorted(o["state"] for o in outcomes) == ["done"] * 4
    for item in added:
        log = RunDir(Path(item["run_dir"])).log.read_text()
        assert f"run {item['run_id']} took slot" in log, log
    assert Backlog(sweep).entries() == []
