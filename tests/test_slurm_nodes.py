"""Sweeps and studies on a dev SLURM cluster of three nodes (slurm/dev-cluster.sh start --nodes 3,
as tests/slurm_cluster.py starts it): an array's tasks spread over the nodes and every run says
where it ran; a node that dies mid-sweep (dev-cluster.sh kill-node: its slurmd and its jobs'
processes SIGKILLed, the node DOWN) has its tasks requeued onto the others, which resume its runs
from their checkpoints, nothing trained twice, nothing lost, and `sweep status` names the lost
node meanwhile; a drained node takes no new task; a study keeps its budget when the node of one
of its workers dies; with slurmctld down, `sweep status` says SLURM did not answer instead of
calling the runs interrupted, and the sweep completes once slurmctld is back; a task SLURM holds
is named with the command that releases it.

Every node declares the machine's CPUs: array_parallelism bounds the tasks that run at once.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from rhmscale.store.folders import RunDir
from rhmscale.store.lock import holder, holder_field
from rhmscale.sweeps.dispatch import submit, wait
from rhmscale.sweeps.grid import expand_points
from rhmscale.sweeps.status import sweep_status
from tests.slurm_cluster import DEV_CLUSTER, TEST_SETTINGS
from tests.test_sweep_slurm import BASE, make_spec, scontrol, wait_until

pytestmark = pytest.mark.slurm

NODES = [f"node{k}" for k in range(1, int(TEST_SETTINGS["nodes"]) + 1)]
RHMSCALE = str(Path(sys.executable).with_name("rhmscale"))
# Runs of a few hundred steps, a checkpoint every 25: long enough to be caught mid-training.
LONGER = {
    **BASE,
    "train": {**BASE["train"], "max_steps": 400, "checkpoint_every": 25},
    "eval": {**BASE["eval"], "n_evals": 2},
}


def dev_cluster(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(DEV_CLUSTER), *args],
        capture_output=True, text=True, timeout=300, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def node_states() -> dict[str, str]:
    out = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, timeout=30
    ).stdout
    return dict(line.split() for line in out.splitlines())


@pytest.fixture
def nodes(slurm_cluster):
    """The three nodes, each up and taking jobs before and after the test (a node the test
    killed or drained is brought back)."""
    assert sorted(node_states()) == NODES, f"the dev cluster's nodes: {node_states()}"
    yield NODES
    for node, state in node_states().items():
        if state.startswith("drain"):
            scontrol("update", f"NodeName={node}", "State=RESUME")
    out = dev_cluster("start")  # starts again the slurmd of a killed node
    assert out.returncode == 0, out.stderr
    wait_until(
        lambda: all(s in ("idle", "mixed", "allocated") for s in node_states().values()),
        60,
        "every node to take jobs again",
    )


def squeue_tasks(array: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-r", "-j", array, "-o", "%i %T %R"],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    return out.stdout.splitlines()


def job_info(job_id: str) -> dict[str, str]:
    """scontrol's fields of a job (finished ones stay MinJobAge, 5 min)."""
    text = scontrol("show", "job", job_id).stdout
    return dict(re.findall(r"(\w+)=(\S*)", text))


def setups(run_dir: Path, run_id: str) -> list[tuple[str, str]]:
    """(node, job) of each time a worker set the run up, from its run.log."""
    log = (run_dir / "run.log").read_text()
    return re.findall(rf"run {run_id} on (\S+) \(job (\S+)\)", log)


def training_node(run_dir: Path) -> str | None:
    """The node of the worker that holds the run, once it trains and has a checkpoint."""
    line = holder(RunDir(run_dir).lock_file)
    if line and " training since " in line and (run_dir / "checkpoints" / "last.ckpt").exists():
        return holder_field(line, "node")
    return None


def starts(log: str, run_id: str) -> list[int]:
    """The steps the run started training from, in order, each time a worker took it (its
    run.log: in a pack's first runs "from step N", taking a slot later "run <id> took slot K at
    its step N"; the log also has the pack's lines about its other runs)."""
    first, later = (
        r"training \d+ run\(s\) from step (\d+)",
        rf"run {run_id} took slot \d+ at its step (\d+)",
    )
    return [int(a or b) for a, b in re.findall(f"{first}|{later}", log)]


def assert_trained_once(run_dir: Path, run_id: str, from_scratch: tuple[int, ...] = (1,)) -> None:
    """Done, not failed, trained from step 0 once (or as often as `from_scratch` allows: a run
    killed with its node before its first checkpoint starts again from 0), and every evaluation
    recorded once, in order."""
    assert RunDir(run_dir).state() == "done", run_id
    log = (run_dir / "run.log").read_text()
    assert starts(log, run_id).count(0) in from_scratch, log
    assert not (run_dir / "failed.json").exists()
    steps = list(pd.read_parquet(RunDir(run_dir).metrics)["step"])
    assert steps == sorted(set(steps)), (run_id, steps)


def test_an_array_spreads_over_the_nodes_and_status_shows_where_runs_train(nodes, tmp_path):
    # Runs long enough that status sees each node's task training (400 steps could all end
    # between two looks on a loaded machine).
    longer = {**LONGER, "train": {**LONGER["train"], "max_steps": 1500, "checkpoint_every": 100}}
    spec = make_spec("spread", {"seed": [0, 1, 2, 3, 4, 5]}, base=longer, runs_per_task=2,
                     array_parallelism=3)  # fmt: skip
    points = expand_points(spec).points
    submission = submit(spec, tmp_path)
    sweep = tmp_path / "spread"
    seen: dict[str, str] = {}  # run id -> node, as `sweep status --runs` shows it

    def look() -> bool:
        out = subprocess.run([RHMSCALE, "sweep", "status", str(sweep), "--runs"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert out.returncode == 0, out.stderr
        for run_id, node in re.findall(r"running (\w+) on (\S+) \(", out.stdout):
            seen[run_id] = node
        return len(set(seen.values())) >= 2 or sweep_status(sweep, spec).counts == {
            "done": len(points)
        }

    # Which nodes SLURM picks is its own: under load two of the three tasks were seen on one
    # node (in turn) and none on the third, so "several nodes" is what is held, not "all".
    wait_until(look, 240, "runs training on two nodes", interval=0.5)
    wait_until(lambda: sweep_status(sweep, spec).counts == {"done": 6}, 300, "the sweep to end")
    assert len(set(seen.values())) >= 2 and set(seen.values()) <= set(nodes), seen
    tasks = {str(job.job_id): job_info(str(job.job_id))["NodeList"] for job in submission.jobs}
    assert len(set(tasks.values())) >= 2 and set(tasks.values()) <= set(nodes), tasks
    for point in points:
        run_dir = sweep / "runs" / point.run_id
        ((node, job),) = setups(run_dir, point.run_id)  # set up once
        assert node == tasks[job], (point.run_id, node, job, tasks)  # the node it ran on
        if point.run_id in seen:
            assert seen[point.run_id] == node
        assert_trained_once(run_dir, point.run_id)


def test_a_lost_nodes_tasks_are_requeued_and_their_runs_resume_elsewhere(nodes, tmp_path):
    spec = make_spec("lost", {"seed": [0, 1, 2, 3, 4, 5]}, base=LONGER, runs_per_task=2,
                     array_parallelism=3)  # fmt: skip
    points = expand_points(spec).points
    submission = submit(spec, tmp_path)
    sweep = tmp_path / "lost"
    runs = {p.run_id: sweep / "runs" / p.run_id for p in points}
    victim: dict[str, str] = {}

    def a_run_training_on_a_node() -> bool:
        for run_id, run_dir in runs.items():
            if node := training_node(run_dir):
                victim.update(run=run_id, node=node)
                return True
        return False

    wait_until(a_run_training_on_a_node, 240, "a run training with a checkpoint", interval=0.2)
    lost = victim["node"]
    # Which runs can be resumed when the node dies: those without a checkpoint yet start again
    # from step 0 (the node can hold two tasks: it declares the machine's two CPUs).
    resumable = {rid for rid, run_dir in runs.items() if RunDir(run_dir).resumable_checkpoints()}
    killed = dev_cluster("kill-node", lost)
    assert killed.returncode == 0, killed.stderr
    # While SLURM finds the node dead, `sweep status` says which one it is.
    said: list[str] = []

    def status_names_the_lost_node() -> bool:
        out = subprocess.run([RHMSCALE, "sweep", "status", str(sweep), "--json"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert out.returncode == 0, out.stderr
        said[:] = [n for n in json.loads(out.stdout)["notes"] if f"node {lost} is lost" in n]
        return bool(said)

    wait_until(status_names_the_lost_node, 60, f"sweep status to name {lost} lost")
    wait_until(lambda: node_states().get(lost, "").startswith("down"), 60, f"{lost} DOWN")
    wait_until(lambda: sweep_status(sweep, spec).counts == {"done": 6}, 300, "the sweep to end")
    # The lost node's task, requeued, runs again on another node (and finds nothing left, or
    # the rest of its runs), and ends.
    array = str(submission.jobs[0].job_id).split("_")[0]
    wait_until(lambda: not squeue_tasks(array), 120, "every task to end")
    infos = [job_info(str(job.job_id)) for job in submission.jobs]
    requeued = [info for info in infos if info.get("Restarts", "0") != "0"]
    assert requeued, "SLURM requeued the lost node's task"
    assert all(i["NodeList"] != lost and i["JobState"] == "COMPLETED" for i in requeued), infos
    assert sorted(p.name for p in (sweep / "runs").iterdir()) == sorted(runs)  # nothing lost
    for run_id, run_dir in runs.items():
        where = setups(run_dir, run_id)
        moved = len(where) == 2 and where[0][0] == lost
        assert_trained_once(run_dir, run_id, (1, 2) if moved and run_id not in resumable else (1,))
        if moved and run_id in resumable:  # it had a checkpoint: resumed from there
            assert starts((run_dir / "run.log").read_text(), run_id)[-1] > 0, run_id
        if run_id == victim["run"]:
            assert [node for node, _ in where][0] == lost and len(where) == 2, where
            assert where[1][0] != lost, where
            steps = starts((run_dir / "run.log").read_text(), run_id)
            assert steps[0] == 0 and len(steps) == 2 and steps[1] > 0, steps  # its checkpoint
        else:
            assert len(where) <= 2 and (len(where) == 1 or where[0][0] == lost), (run_id, where)
    print(f"lost {lost}: {said[0]}")


def test_a_drained_node_gets_no_new_task(nodes, tmp_path):
    drained = nodes[-1]
    out = scontrol("update", f"NodeName={drained}", "State=DRAIN", "Reason=maintenance")
    assert out.returncode == 0, out.stderr
    spec = make_spec("drain", {"seed": [0, 1, 2, 3]}, runs_per_task=1, array_parallelism=3)
    submission = submit(spec, tmp_path)
    assert not wait(submission)  # every task ran (and found runs to take, or none)
    assert sweep_status(tmp_path / "drain", spec).counts == {"done": 4}
    ran_on = {job_info(str(job.job_id))["NodeList"] for job in submission.jobs}
    assert drained not in ran_on and ran_on <= set(nodes), ran_on
    assert node_states()[drained] == "drained"


def test_a_study_keeps_its_budget_when_a_workers_node_dies(nodes, tmp_path):
    import optuna

    from rhmscale.tuning.dispatch import submit as submit_study
    from rhmscale.tuning.study import storage
    from tests.test_tune_slurm import finish, study_spec

    spec = study_spec("budget", base=LONGER, workers=2, budget={"trials": 4})
    submitted = submit_study(spec, tmp_path)
    folder = tmp_path / "budget"
    victim: dict[str, str] = {}

    def a_trial_training_on_a_node() -> bool:
        for run_dir in folder.glob("runs/*"):
            if node := training_node(run_dir):
                victim.update(run=run_dir.name, node=node)
                return True
        return False

    wait_until(a_trial_training_on_a_node, 240, "a trial training with a checkpoint", 0.2)
    workers = {job_info(str(job.job_id))["NodeList"] for job in submitted.jobs}
    assert len(workers) == 2, workers  # the two workers sit on two nodes
    killed = dev_cluster("kill-node", victim["node"])
    assert killed.returncode == 0, killed.stderr
    finish(submitted)
    trials = optuna.load_study(study_name="budget", storage=storage(folder)).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4  # the budget, no trial more
    runs = [t.user_attrs["run_id"] for t in trials]
    assert victim["run"] in runs and len(set(runs)) == 4
    log = (folder / "runs" / victim["run"] / "run.log").read_text()
    steps = starts(log, victim["run"])  # the lost trial went on from its checkpoint
    assert steps.count(0) == 1 and len(steps) >= 2 and steps[-1] > 0, log
    where = setups(folder / "runs" / victim["run"], victim["run"])
    assert where[0][0] == victim["node"] and where[-1][0] != victim["node"], where


def test_slurmctld_down_mid_sweep_is_said_and_the_sweep_completes_after(nodes, tmp_path):
    # Runs long enough to train on while slurmctld is down and `sweep status` is asked.
    longest = {**LONGER, "train": {**LONGER["train"], "max_steps": 5000, "checkpoint_every": 100}}
    spec = make_spec("ctld", {"seed": [0, 1]}, base=longest, array_parallelism=2)
    submit(spec, tmp_path)
    sweep = tmp_path / "ctld"
    runs = [sweep / "runs" / p.run_id for p in expand_points(spec).points]
    wait_until(lambda: any(training_node(r) for r in runs), 240, "a run training", 0.2)
    pidfile = Path(os.environ["SLURM_CONF"]).parent / "run" / "slurmctld.pid"
    os.kill(int(pidfile.read_text()), signal.SIGTERM)
    try:
        wait_until(lambda: scontrol("ping").returncode != 0, 30, "slurmctld to stop")
        # The counts first: both runs still train (5,000 steps), so neither may be done yet.
        counts = json.loads(
            subprocess.run(
                [RHMSCALE, "sweep", "status", str(sweep), "--json"],
                capture_output=True,
                text=True,
                timeout=120,
            ).stdout  # fmt: skip
        )["counts"]
        assert counts["unknown"] >= 1 and counts["interrupted"] == 0, counts
        out = subprocess.run([RHMSCALE, "sweep", "status", str(sweep)],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stderr
        text = " ".join(out.stdout.split())
        assert "SLURM did not answer (squeue failed" in text, text
        assert "interrupted" not in text.replace("not interrupted", ""), text
    finally:
        started = dev_cluster("start")
        assert started.returncode == 0, started.stderr
    t0 = time.monotonic()
    wait_until(lambda: sweep_status(sweep, spec).counts == {"done": 2}, 300, "the sweep to end")
    for run_dir in runs:
        assert_trained_once(run_dir, run_dir.name)
        assert len(setups(run_dir, run_dir.name)) == 1  # never interrupted: trained on
    print(f"the sweep ended {time.monotonic() - t0:.0f} s after slurmctld came back")


def test_a_task_slurm_holds_is_named_with_the_command_that_releases_it(nodes, tmp_path):
    """A held task never starts by itself (a launch that failed on a node comes back "launch
    failed requeued held"; an admin's `scontrol hold`): `sweep status` names it and the
    `scontrol release` that lets it start; run as given, it does, and the sweep completes."""
    spec = make_spec("held", {"seed": [0, 1, 2]}, runs_per_task=1, array_parallelism=1)
    submission = submit(spec, tmp_path)
    last = str(submission.jobs[-1].job_id)  # waits behind the array's limit of one task
    held = scontrol("hold", last)
    assert held.returncode == 0, held.stderr
    out = subprocess.run([RHMSCALE, "sweep", "status", str(tmp_path / "held")],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    found = re.search(rf"note: SLURM holds task\(s\) {last} \((\w+)\): they start only once "
                      rf"released: (scontrol release {last})", text)  # fmt: skip
    assert found, text
    released = subprocess.run(found.group(2).split(), capture_output=True, text=True, timeout=30)
    assert released.returncode == 0, released.stderr
    assert not wait(submission)  # the held task ran too
    assert sweep_status(tmp_path / "held", spec).counts == {"done": 3}
    assert job_info(last)["JobState"] == "COMPLETED", job_info(last)
    print(f"squeue's reason for the held task: {found.group(1)}")


def test_the_cluster_knows_its_nodes(nodes):
    """`status` shows each node's slurmd and exits 0 only when every node answers; each node
    has its own port, pid and log file; kill-node refuses a node that is not there, and bad
    --nodes values, before touching anything."""
    out = dev_cluster("status")
    assert out.returncode == 0, out.stdout + out.stderr
    assert [f"up ({node})" for node in nodes] == re.findall(r"slurmd\s+(up \(\w+\))", out.stdout)
    conf = Path(os.environ["SLURM_CONF"])
    ports = re.findall(r"^NodeName=(\w+) .*Port=(\d+)", conf.read_text(), re.M)
    assert [node for node, _ in ports] == nodes and len({port for _, port in ports}) == 3
    for node in nodes:
        assert (conf.parent / "run" / f"slurmd-{node}.pid").is_file()
        assert (conf.parent / "log" / f"slurmd-{node}.log").is_file()
    wrong = dev_cluster("kill-node", "node9")
    assert wrong.returncode == 1 and "no node 'node9' in this cluster" in wrong.stderr
    for bad in ("0", "17", "two"):
        refused = dev_cluster("start", "--nodes", bad)
        assert refused.returncode == 1 and "--nodes must be a number of nodes from 1 to 16" in (
            refused.stderr
        )
    assert sorted(node_states()) == nodes
