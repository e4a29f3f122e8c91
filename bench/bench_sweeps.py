"""Speed of sweep planning, submission preparation and status on CPU (no jobs are run).

    python bench/bench_sweeps.py                        # print the timings
    python bench/bench_sweeps.py --out bench/results/sweeps_cpu.json

- plan: expand and validate a 10,000-point grid, then read the state of every run (target < 2 s)
- prepare: everything a 1,000-run array submission needs short of sbatch: expansion, state,
  tasks, the sweep.yaml, and pickling each task's payload as submitit does (target < 10 s)
- status: a fake 1,000-run sweep folder (done, failed, interrupted, pending runs and a
  jobs.jsonl) read by `sweep status`, counting the squeue and sacct calls (target < 1 s, 0 sacct)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from timing import timed  # bench/timing.py (the script's folder is on sys.path)

from rhmscale.store.atomic import atomic_write_json, atomic_write_text
from rhmscale.store.folders import SweepDir
from rhmscale.sweeps.backlog import Backlog
from rhmscale.sweeps.dispatch import prepare
from rhmscale.sweeps.grid import expand_points
from rhmscale.sweeps.job import SweepWorker
from rhmscale.sweeps.spec import parse_spec, spec_to_yaml
from rhmscale.sweeps.status import sweep_status

BASE = {
    "grammar": {"s": 2},
    "data": {"n_test": 256},
    "model": {"arch": "transformer", "width": 128},
    "train": {"max_steps": 1000},
    "tracking": {"wandb": "disabled"},
}


def grid_spec(name: str, n_seeds: int, n_p: int) -> dict:
    # v x m x L = 5 x 2 x 1 cells; P log-spaced; seeds.
    return {
        "name": name,
        "base": BASE,
        "grid": {
            "grammar.L": [4],
            "grammar.v": [16, 24, 32, 48, 64],
            "grammar.m": [2, 4],
            "data.P": {"logspace": [64, 60000, n_p]},
            "seed": list(range(n_seeds)),
        },
        "executor": {"kind": "slurm", "partition": "gpu", "gpus_per_task": 1},
    }


def bench_plan(root: Path, repeats: int) -> dict:
    spec = parse_spec(grid_spec("plan10k", n_seeds=20, n_p=50))
    n = len(expand_points(spec).points)

    def plan() -> None:
        sweep_status(root / spec.name, spec, query_queue=False)

    return {"n_runs": n, **timed(plan, repeats), "target_s": 2.0}


def bench_prepare(root: Path, repeats: int) -> dict:
    import cloudpickle
    from submitit.core.utils import DelayedSubmission

    spec = parse_spec(grid_spec("prep1k", n_seeds=10, n_p=10))
    n = len(expand_points(spec).points)
    sweep = SweepDir(root / spec.name)

    def prep() -> None:
        prepared = prepare(spec, root, query_queue=False)
        atomic_write_text(sweep.spec_file, spec_to_yaml(spec))
        Backlog(sweep).put([item for items in prepared.tasks for item in items])
        for _ in prepared.tasks:
            cloudpickle.dumps(DelayedSubmission(SweepWorker(), str(sweep.path), 32, 1))
        assert len(prepared.run_ids) == n

    return {"n_runs": n, **timed(prep, repeats), "target_s": 10.0}


def fake_sweep(root: Path) -> tuple[Path, object]:
    spec = parse_spec(grid_spec("status1k", n_seeds=10, n_p=10))
    sweep = SweepDir(root / spec.name)
    points = expand_points(spec).points
    atomic_write_text(sweep.spec_file, spec_to_yaml(spec))
    tasks = []
    for i, point in enumerate(points):
        run = sweep.run_dir(point.run_id)
        run.path.mkdir(parents=True, exist_ok=True)
        if i % 10 < 6:
            run.write_metrics([{"step": 1}])  # a finished run: whole metrics, readable result
            atomic_write_json(run.result, {"run_id": point.run_id, "final": {"step": 1}})
        elif i % 10 == 6:
            atomic_write_json(run.failed, {"error": "RuntimeError", "message": "boom"})
        elif i % 10 == 7:
            run.checkpoints.mkdir(exist_ok=True)
            zipfile.ZipFile(run.last_checkpoint, "w").close()  # whole, as torch's are
        tasks.append({"job_id": f"999999_{i}", "run_ids": [point.run_id]})
    sweep.append_job_line(
        {"event": "submit", "kind": "slurm", "array_id": "999999", "tasks": tasks}
    )
    return sweep.path, spec


def bench_status(root: Path, repeats: int) -> dict:
    path, _ = fake_sweep(root)
    calls: list[str] = []
    real_run = subprocess.run

    def counting_run(cmd, *args, **kwargs):
        calls.append(str(cmd[0]) if isinstance(cmd, list | tuple) else str(cmd))
        return real_run(cmd, *args, **kwargs)

    subprocess.run = counting_run  # type: ignore[assignment]
    try:
        result = timed(lambda: sweep_status(path), repeats)
    finally:
        subprocess.run = real_run  # type: ignore[assignment]
    per_call = len(calls) / (repeats + 1)
    counts = dict(sweep_status(path).counts)
    return {
        "n_runs": sum(counts.values()),
        "counts": counts,
        **result,
        "target_s": 1.0,
        "squeue_calls_per_status": sum(c.endswith("squeue") for c in calls) / (repeats + 1),
        "sacct_calls_per_status": sum(c.endswith("sacct") for c in calls) / (repeats + 1),
        "subprocess_calls_per_status": per_call,
        "slurm_available": bool(os.environ.get("SLURM_CONF")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        results = {
            "plan_10k_grid": bench_plan(root, args.repeats),
            "prepare_1k_submission": bench_prepare(root, args.repeats),
            "status_1k_sweep": bench_status(root, args.repeats),
        }
    record = {
        "benchmark": "sweeps",
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "results": results,
    }
    print(json.dumps(record, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
