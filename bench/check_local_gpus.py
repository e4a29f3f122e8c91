"""Check the local executor spreads a sweep over every visible GPU (one worker per GPU).

Submits a small sweep twice (ordinary runs, then packs) with `executor: {kind: local,
gpus_per_task: 1}` while sampling `nvidia-smi` for the GPUs our worker processes compute on.

    python bench/check_local_gpus.py --root /tmp/gpus --out result.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import threading
import time
from pathlib import Path

from rhmscale.sweeps.dispatch import submit, wait
from rhmscale.sweeps.spec import parse_spec
from rhmscale.sweeps.status import sweep_status

BASE = {
    "grammar": {"v": 16, "m": 4, "L": 3},
    "data": {"P": 1024, "n_test": 256},
    "model": {"arch": "transformer", "width": 128, "depth": 2, "heads": 4},
    "train": {"max_steps": 1500, "batch_size": 256, "device": "cuda", "checkpoint_every": 1500},
    "eval": {"n_samples": 256, "n_evals": 2},
    "tracking": {"wandb": "disabled"},
}


def gpus_in_use(seen: dict[str, set[int]], stop: threading.Event) -> None:
    """GPU index -> pids computing on it, sampled every 0.3 s."""
    index = {
        line.split(", ")[1]: int(line.split(", ")[0])
        for line in subprocess.run(
            ["nvidia-smi", "--query-gpu=index,uuid", "--format=csv,noheader"],
            capture_output=True, text=True, check=True,
        ).stdout.splitlines()
    }  # fmt: skip
    while not stop.is_set():
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,gpu_uuid", "--format=csv,noheader"],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
        for line in out.splitlines():
            pid, uuid = line.split(", ")
            seen.setdefault(str(index[uuid.strip()]), set()).add(int(pid))
        time.sleep(0.3)


def run_sweep(name: str, root: Path, executor: dict) -> dict:
    spec = parse_spec(
        {
            "name": name,
            "base": BASE,
            "grid": {"data.P": [512, 1024], "seed": [0, 1]},
            "executor": {"kind": "local", "gpus_per_task": 1, **executor},
        }
    )
    seen: dict[str, set[int]] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=gpus_in_use, args=(seen, stop))
    sampler.start()
    start = time.perf_counter()
    submission = submit(spec, root)
    errors = wait(submission)
    wall = time.perf_counter() - start
    stop.set()
    sampler.join()
    return {
        "sweep": name,
        "tasks": len(submission.jobs),
        "errors": errors,
        "states": dict(sweep_status(root / name, spec).counts),
        "wall_s": round(wall, 1),
        "gpu_pids": {gpu: sorted(pids) for gpu, pids in sorted(seen.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, default=Path("/tmp/gpus"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = [
        run_sweep("ordinary", args.root, {}),
        run_sweep("packed", args.root, {"pack": True, "runs_per_task": 2}),
    ]
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
