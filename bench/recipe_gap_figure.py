"""The recipe-or-architecture figure of results/tuning/: novel level-3 accuracy against samples
seen, for the transformer runs of bench/transformer_long.yaml and the tree U-Net study's
enqueued (default) and best trials.

    python bench/recipe_gap_figure.py results/tuning/transformer-long/collected.csv \
        /tmp/rt/.device-runs/tune-demo-tree-unet -o results/tuning/recipe-gap.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from rhmscale.report.plot_kit import metric_words  # noqa: E402
from rhmscale.tuning.report import read_best  # noqa: E402
from rhmscale.tuning.study import best_trial, storage  # noqa: E402

METRIC = "gen/novel_acc_l3"


def recipe(row: pd.Series) -> str:
    return (f"transformer w{row['model.width']} h{row['model.heads']}"
            f"{' tc' if row['model.time_cond'] else ''}, lr {row['train.lr']:.2g}, "
            f"warm-up {row['train.warmup_steps']}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("long", type=Path, help="collected.csv of bench/transformer_long.yaml")
    parser.add_argument("study", type=Path, help="the tree U-Net study folder")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    import optuna

    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    runs = pd.read_csv(args.long)
    colours = dict(
        zip(
            sorted({recipe(r) for _, r in runs.iterrows()}),
            ["tab:blue", "tab:orange", "tab:purple"],
            strict=False,
        )
    )
    groups = [(recipe(rows.iloc[0]), seed, rows) for (_, seed), rows in
              runs.sort_values("step").groupby(["run_id", "seed"])]  # fmt: skip
    for name, seed, rows in sorted(groups, key=lambda g: g[:2]):
        ax.plot(rows["samples_seen"], rows[METRIC], color=colours[name], lw=1.2,
                ls="-" if seed == 0 else "--", label=f"{name} (seed {seed})")  # fmt: skip
    (study_name,) = read_best(args.study)
    study = optuna.load_study(study_name=study_name, storage=storage(args.study))
    best = best_trial(study)
    for trial, label, colour in ((study.trials[0], "default recipe", "tab:green"),
                                 (best, "best", "tab:red")):  # fmt: skip
        rows = pd.read_parquet(args.study / "runs" / trial.user_attrs["run_id"] / "metrics.parquet")
        rows = rows.dropna(subset=[METRIC]).sort_values("step")
        ax.plot(rows["samples_seen"], rows[METRIC], color=colour, lw=2.2,
                label=f"tree U-Net, {label} (trial {trial.number})")  # fmt: skip
    ax.axhline(0.5, ls=":", color="black", lw=1, label="threshold")
    ax.set(xscale="log", xlabel="samples seen (sequences)", ylabel=metric_words(METRIC),
           title="v=16 m=4 L=3, P = 16,384: level 3 learned at 0.5")  # fmt: skip
    ax.legend(fontsize=7, loc="upper left")
    fig.savefig(args.output, dpi=110, bbox_inches="tight")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
