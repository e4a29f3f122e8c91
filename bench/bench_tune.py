"""Trials per GPU-hour: one study spec run with one trial per worker, then with packs of K trials.

    python bench/bench_tune.py bench/tune_transformer.yaml --packs 1 16 --root /tmp/bt \
        --out bench/results/tune_packed_h100.json

Each variant runs the spec's study (same search, budget and seed; its own folder) on the local
executor, one worker on the one GPU, and is timed from submission to the last trial told,
start-up and compilation included. Pruning is off so both variants train every trial to the
same length (packs would otherwise also differ in how much they prune).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import optuna

from rhmscale.store.atomic import atomic_write_json
from rhmscale.tuning.dispatch import submit
from rhmscale.tuning.spec import load_study_spec
from rhmscale.tuning.study import storage


def variant(spec_path: Path, k: int, root: Path) -> dict:
    spec = load_study_spec(spec_path)
    name = f"{spec.name}-k{k}"
    executor = spec.executor.model_copy(update={"pack": k > 1, "runs_per_task": k})
    spec = spec.model_copy(
        update={
            "name": name,
            "executor": executor,
            "workers": 1,
            "pruner": spec.pruner.model_copy(update={"kind": "none"}),
        }  # fmt: skip
    )
    started = time.perf_counter()
    for job in submit(spec, root).jobs:
        job.result()
    wall = time.perf_counter() - started
    trials = optuna.load_study(study_name=name, storage=storage(root / name)).trials
    done = [t for t in trials if t.state.name == "COMPLETE"]
    return {
        "pack": k,
        "trials": len(done),
        "wall_s": wall,
        "trials_per_gpu_hour": 3600 * len(done) / wall,
        "best_value": min((t.value for t in done), default=None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--packs", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--root", type=Path, default=Path("bench-tune"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    results = [variant(args.spec, k, args.root) for k in args.packs]
    atomic_write_json(args.out, {"spec": str(args.spec), "device": device, "variants": results})
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
