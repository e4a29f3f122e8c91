"""What early stopping did to a sweep: member-steps trained, runs stopped, wall time, and P*_k,
from two finished sweep folders of one spec, with and without early stopping.

    python bench/early_stopping.py runs/tree-unet-l3 runs/tree-unet-l3-full \
        --wall 154 136 --device "NVIDIA H100 80GB HBM3" --out bench/results/early_stopping_h100.json

The wall times are the `rhmscale sweep submit` commands' own (start-up and compilation included),
as measured by the caller; this script does not time anything.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rhmscale.results.collect import collect
from rhmscale.results.fit import FitOptions, fit
from rhmscale.store.atomic import atomic_write_json
from rhmscale.store.folders import iter_run_dirs


def summary(folder: Path, wall_s: float) -> dict:
    results = [json.loads(run.result.read_text()) for run in iter_run_dirs(folder)]
    trained = sum(r["final"]["step"] for r in results)
    capped = sum(r["config"]["train"]["max_steps"] for r in results)
    result = fit(collect(folder).frame, FitOptions(n_boot=500))
    return {
        "sweep": folder.name,
        "runs": len(results),
        "stopped_early": sum(r["stopped_early"] for r in results),
        "member_steps": trained,
        "member_steps_at_max_steps": capped,
        "wall_s": wall_s,
        "p_star": result.crossings[["cell", "k", "P_star", "censored"]].to_dict("records"),
        "exponents": result.exponents[["term", "estimate", "lo", "hi"]].to_dict("records"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("with_early_stopping", type=Path)
    parser.add_argument("without", type=Path)
    parser.add_argument("--wall", nargs=2, type=float, required=True, metavar="S")
    parser.add_argument("--device", required=True)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = {
        "device": args.device,
        "with_early_stopping": summary(args.with_early_stopping, args.wall[0]),
        "without": summary(args.without, args.wall[1]),
    }
    if args.out:
        atomic_write_json(args.out, report)
    print(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
