"""Planning packs: runs of one shape share a pack across cells, in order of data.P; other shapes
never do."""

import subprocess
import sys
from pathlib import Path

import yaml

from rhmscale.sweeps.dispatch import prepare
from rhmscale.sweeps.grouping import group_tasks
from rhmscale.sweeps.spec import ExecutorSpec, parse_spec

SPEC = {
    "name": "packs",
    "base": {"grammar": {"L": 3}, "data": {"n_test": 16}, "train": {"device": "cpu"}},
    "grid": {
        "grammar.v": [8, 16],
        "grammar.m": [2, 4],
        "data.P": [32, 64, 128],
        "seed": [0, 1, 2],
    },
    "executor": {"kind": "slurm", "partition": "debug", "pack": True, "runs_per_task": 8},
}


def test_packs_fill_across_cells_of_one_shape(tmp_path):
    prepared = prepare(parse_spec(SPEC), tmp_path, query_queue=False)
    tasks = prepared.tasks
    # 2 shapes (v) x 18 runs (m x P x seed): each shape in 3 packs of 6, one pack per task.
    assert sorted(len(t) for t in tasks) == [6] * 6
    for task in tasks:
        assert len({item["pack"] for item in task}) == 1
        assert len({item["config"]["grammar"]["v"] for item in task}) == 1
    assert any(len({item["config"]["grammar"]["m"] for item in t}) == 2 for t in tasks)
    # Runs of similar P train together: a shape's packs cover disjoint, increasing P ranges.
    for v in (8, 16):
        spans = sorted(
            (min(ps), max(ps))
            for t in tasks
            if t[0]["config"]["grammar"]["v"] == v
            for ps in [[item["config"]["data"]["P"] for item in t]]
        )
        assert spans == [(32, 32), (64, 64), (128, 128)]
    assert sorted(prepared.run_ids) == sorted({i["run_id"] for t in tasks for i in t})


def test_local_workers_are_dealt_whole_packs_longest_first():
    from rhmscale.sweeps.grouping import slots_of

    items = [
        {"run_id": str(i), "config": {"grammar": {"v": 8}, "data": {"P": 32 + i}}}
        for i in range(10)
    ]
    tasks = group_tasks(items, ExecutorSpec(kind="local", pack=True, runs_per_task=4, workers=2))
    # Two workers (they take runs from the backlog; the plan shows the packs they start with).
    assert len(tasks) == 2 and sum(len(t) for t in tasks) == 10
    packs = {}
    for item in (item for task in tasks for item in task):
        packs.setdefault(item["pack"], []).append(item["config"]["data"]["P"])
    assert sorted(len(p) for p in packs.values()) == [3, 3, 4]
    assert slots_of(tasks) == 4  # each worker's slots: the largest pack
    # Longest first: no early stopping, so every run trains max_steps and the pack of 4 costs
    # most; packs of equal cost in order of their largest P.
    largest = [max(packs[number]) for number in sorted(packs)]
    assert [len(packs[number]) for number in sorted(packs)] == [4, 3, 3]
    assert largest[1:] == sorted(largest[1:], reverse=True)
    fresh = [{k: v for k, v in item.items() if k != "pack"} for item in items]
    unpacked = group_tasks(fresh, ExecutorSpec(kind="local", pack=False, workers=2))
    assert slots_of(unpacked) == 1


def test_plan_shows_the_packs(tmp_path):
    spec_file = tmp_path / "packs.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC))
    rhmscale = str(Path(sys.executable).with_name("rhmscale"))
    out = subprocess.run(
        [rhmscale, "sweep", "plan", str(spec_file), "--root", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "packs (members train together" in out.stdout
    assert "36 to submit as 6 slurm task(s)" in out.stdout


def test_pack_plan_names_what_tells_packs_apart_and_what_members_vary_in(tmp_path):
    from rhmscale.sweeps.grouping import pack_plan

    plan = pack_plan(prepare(parse_spec(SPEC), tmp_path, query_queue=False).tasks)
    assert plan.shape_keys == ["grammar.v"]  # the only shared setting that differs
    assert plan.member_keys == ["grammar.m", "data.P", "seed"]
    assert len(plan.packs) == 6 and sum(pack.size for pack in plan.packs) == 36
    for pack in plan.packs:
        assert pack.shape["grammar.v"] in (8, 16) and len(pack.members["data.P"]) == 1
        assert pack.members["grammar.m"] == [2, 4] and pack.members["seed"] == [0, 1, 2]


def test_every_worker_of_a_shared_queue_counts_for_status_and_cancel(tmp_path):
    """A run of a shared queue may be trained by any of its workers: it is running while one
    of them lives, and cancel stops them all (stand-in workers: sleeping processes)."""
    import subprocess
    import time

    from rhmscale.store.folders import SweepDir
    from rhmscale.sweeps.dispatch import cancel_jobs
    from rhmscale.sweeps.queue import active_states, latest_jobs

    sleepers = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    ended = subprocess.Popen(["true"])
    ended.wait()
    try:
        pids = [str(p.pid) for p in [*sleepers, ended]]
        sweep = SweepDir(tmp_path / "s")
        tasks = [{"job_id": pid, "run_ids": ["a", "b"]} for pid in pids]  # the last has ended
        sweep.append_job_line({"event": "submit", "kind": "local", "tasks": tasks})
        latest, _ = latest_jobs(sweep.read_job_lines())
        assert latest["a"].job_ids == tuple(pids)
        assert active_states(latest) == {"a": "running", "b": "running"}
        cancelled, _ = cancel_jobs(sweep)
        assert sorted(cancelled) == sorted(pids[:2])
        deadline = time.monotonic() + 10
        while any(p.poll() is None for p in sleepers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(p.poll() is not None for p in sleepers)
    finally:
        for p in sleepers:
            p.kill()
