"""Compare the runs of bench/slurm_gpu_scenario.sh's sweeps with the uninterrupted serial ones.

python bench/slurm_gpu_compare.py ROOTS --out compare.json [--reference serial]

ROOTS holds serial/, shared/ and requeue/, each with one sweep folder. The same spec gives the
same run ids in each, so every run of the others is matched with its twin in the reference:
per run, whether it is done, the step it last resumed from (run.log), and the largest
difference of its final metrics and of its val/loss curve from the twin's.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pandas as pd

CONTINUOUS = ("train/loss", "val/loss")


def runs_of(root: Path) -> dict[str, Path]:
    (sweep,) = [p for p in root.iterdir() if (p / "runs").is_dir()]
    return {run.name: run for run in (sweep / "runs").iterdir()}


def final(run: Path) -> dict[str, float] | None:
    result = run / "result.json"
    return json.loads(result.read_text())["final"] if result.exists() else None


def resumed_from(run: Path) -> list[int]:
    log = (run / "run.log").read_text()
    return [int(step) for step in re.findall(r"training \d+ run\(s\) from step (\d+)", log)]


def curve(run: Path, metric: str) -> pd.Series:
    frame = pd.read_parquet(run / "metrics.parquet")
    return frame.dropna(subset=[metric]).set_index("step")[metric]


def first_difference(twin: Path, run: Path, metric: str) -> tuple[int | None, float]:
    """The first evaluation step where the two curves differ, and their largest difference."""
    curves = pd.concat([curve(twin, metric), curve(run, metric)], axis=1, join="inner")
    diff = (curves.iloc[:, 0] - curves.iloc[:, 1]).abs()
    return (int(diff[diff > 0].index.min()) if (diff > 0).any() else None), float(diff.max())


def compare(twin: Path, run: Path) -> dict:
    a, b = final(twin), final(run)
    row: dict = {"done": b is not None, "resumed_from": resumed_from(run)}
    if a is None or b is None:
        return row
    shared = sorted(set(a) & set(b) - {"wall_s", "epoch"})
    diffs = {key: abs(a[key] - b[key]) for key in shared}
    row["max_abs_diff_continuous"] = max(diffs[k] for k in CONTINUOUS)
    row["max_abs_diff_generation"] = max(v for k, v in diffs.items() if k.startswith("gen/"))
    # fractions in [0, 1] (accuracies, copy share), apart from counts such as gen/novel_n
    row["max_abs_diff_accuracy"] = max(
        v for k, v in diffs.items() if "acc" in k or k.endswith("_frac")
    )
    row["bitwise_equal_final"] = all(v == 0 for v in diffs.values())
    row["val_loss_curve_max_abs_diff"] = first_difference(twin, run, "val/loss")[1]
    first, row["train_loss_curve_max_abs_diff"] = first_difference(twin, run, "train/loss")
    row["train_loss_first_differs_at"] = first
    resumes = [step for step in row["resumed_from"] if step > 0]
    row["differs_before_any_resume"] = first is not None and (not resumes or first < min(resumes))
    row["val_loss_final"] = [a["val/loss"], b["val/loss"]]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--reference", default="serial", help="the uninterrupted sweep's root")
    args = parser.parse_args()
    reference = runs_of(args.roots / args.reference)
    report: dict = {
        "reference": args.reference,
        "reference_done": sum(final(r) is not None for r in reference.values()),
    }
    for label in ("serial", "shared", "requeue"):
        if label == args.reference or not (args.roots / label).is_dir():
            continue
        runs = runs_of(args.roots / label)
        rows = {rid: compare(reference[rid], run) for rid, run in sorted(runs.items())}
        summary = {
            "runs": len(rows),
            "done": sum(r["done"] for r in rows.values()),
            "resumed": sum(any(s > 0 for s in r["resumed_from"]) for r in rows.values()),
        }
        summary["differs_before_any_resume"] = sum(
            r.get("differs_before_any_resume", False) for r in rows.values()
        )
        for key in (
            "max_abs_diff_continuous",
            "max_abs_diff_generation",
            "max_abs_diff_accuracy",
            "train_loss_curve_max_abs_diff",
        ):
            values = [r[key] for r in rows.values() if key in r]
            summary[key] = max(values) if values else None
        equal = [r.get("bitwise_equal_final", False) for r in rows.values()]
        summary["bitwise_equal_final"] = sum(equal)
        report[label] = {"summary": summary, "runs": rows}
        print(label, json.dumps(summary))
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
