"""Trials per GPU-hour: one study spec run with one trial per worker, then with packs of K trials.

    python bench/bench_tune.py bench/tune_transformer.yaml --variants 1x1:6 1x4:8 16x1:32 \
        --root /tmp/bt --out bench/results/tune_packed_h200.json

A variant KxW:N is packs of K trials (1: no packing), W workers sharing the one GPU, N trials
(default: the spec's budget). Each runs the spec's study (same search and seed; its own folder)
on the local executor and is timed from submission to the last trial told, start-up and
compilation included. Pruning is off so every variant trains its trials to the same rule (packs
would otherwise also differ in how much they prune); a trial still stops once it has learned
the objective's level, so the trained member-steps are counted too. --time-min stops a variant
asking for trials after that many minutes (the trials it holds finish). Each variant starts
from empty torch compile caches.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

import optuna

from rhmscale.store.atomic import atomic_write_json
from rhmscale.store.folders import read_field
from rhmscale.tuning.dispatch import submit
from rhmscale.tuning.spec import StudySpec, load_study_spec
from rhmscale.tuning.study import storage


def parse_variant(text: str) -> tuple[int, int, int | None]:
    """'16x1:32' -> (16, 1, 32); the trial count may be left out."""
    match = re.fullmatch(r"(\d+)x(\d+)(?::(\d+))?", text)
    if not match or int(match[1]) < 1 or int(match[2]) < 1:
        raise argparse.ArgumentTypeError(
            f"variant {text!r}: write PACKxWORKERS[:TRIALS], e.g. 16x1:32 or 1x4"
        )
    return int(match[1]), int(match[2]), int(match[3]) if match[3] else None


def variant_spec(
    spec: StudySpec, pack: int, workers: int, trials: int | None, time_min: float | None
) -> StudySpec:
    shares = workers if spec.executor.gpus_per_task else 1  # the workers share the one GPU
    executor = spec.executor.model_copy(
        update={"pack": pack > 1, "runs_per_task": pack, "tasks_per_gpu": shares}
    )
    budget = spec.budget.model_copy(
        update={"trials": trials or spec.budget.trials, "time_min": time_min}
    )
    return spec.model_copy(
        update={
            "name": f"{spec.name}-k{pack}w{workers}",
            "executor": executor,
            "workers": workers,
            "budget": budget,
            "pruner": spec.pruner.model_copy(update={"kind": "none"}),
        }  # fmt: skip
    )


def variant(spec: StudySpec, root: Path) -> dict:
    folder = root / spec.name
    if folder.exists():
        raise SystemExit(f"{folder} exists: a variant is timed on a new study; use another --root")
    # Every variant compiles from empty caches, as a first study does (else the later variants
    # would find the first's kernels); the local workers inherit these.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / f"{spec.name}-inductor-cache")
    os.environ["TRITON_CACHE_DIR"] = str(root / f"{spec.name}-triton-cache")
    started = time.perf_counter()
    for job in submit(spec, root).jobs:
        job.result()
    wall = time.perf_counter() - started
    trials = optuna.load_study(study_name=spec.name, storage=storage(folder)).trials
    done = [t for t in trials if t.state.name == "COMPLETE"]
    runs = {t.user_attrs["run_id"] for t in done}
    steps = sum(read_field(folder / "runs" / r / "result.json", "final")["step"] for r in runs)
    return {
        "pack": spec.executor.runs_per_task,
        "workers": spec.workers,
        "trials": len(done),
        "wall_s": wall,
        "trials_per_gpu_hour": 3600 * len(done) / wall,
        "member_steps": steps,
        "member_steps_per_s": steps / wall,
        "best_value": min((t.value for t in done), default=None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--variants", type=parse_variant, nargs="+", default=["1x1", "16x1"])
    parser.add_argument("--time-min", type=float, default=None)
    parser.add_argument("--root", type=Path, default=Path("bench-tune"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    spec = load_study_spec(args.spec)
    out = {"spec": str(args.spec), "device": device, "torch": torch.__version__,
           "date": time.strftime("%Y-%m-%d"), "variants": []}  # fmt: skip
    for pack, workers, trials in (
        parse_variant(v) if isinstance(v, str) else v for v in args.variants
    ):
        one = variant_spec(spec, pack, workers, trials, args.time_min)
        out["variants"].append(variant(one, args.root))
        print(json.dumps(out["variants"][-1]), flush=True)
        atomic_write_json(args.out, out)  # each variant as it ends: a cut bench keeps them


if __name__ == "__main__":
    main()
