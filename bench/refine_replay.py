"""Replay `rhmscale sweep refine` on committed runs (issue 21): how many of a full grid's runs
does an adaptive search need for the same exponent intervals?

Starts from 3 committed sizes per cell (the first, middle and last, every seed), then rounds:
fit (rhmscale.results.fit, the real fit) -> refinement (results/refinement.py, the proposals
`sweep refine` makes) -> each proposed size replaced by the cell's nearest committed size (in
log P), its proposed seeds where committed, runs already used left out -> the budget spent as
sweeps/refine.py spends it (whole proposals in priority order). It stops when a round adds
nothing (every bracket meets the target, or no committed size is nearer, or the budget is
spent). Every round's runs, exponents and half-widths are written beside the full grid's.

    python bench/refine_replay.py results/paper-lite/collected.csv -o results/refine \
        --levels 2- --max-runs 94
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from rhmscale.config import REPLICATE_SEED
from rhmscale.results.cells import SIZE, with_cells
from rhmscale.results.collect import read_table
from rhmscale.results.fit import fit, json_safe
from rhmscale.results.options import FitOptions
from rhmscale.results.refinement import refinement
from rhmscale.sweeps.refine import budgeted

TOLERANCE = 1.10  # half-widths within 10% of the full grid's


def half_widths(exponents: pd.DataFrame) -> dict[str, float]:
    return {r.term: (r.hi - r.lo) / 2 for r in exponents.itertuples()}


def start(runs: pd.DataFrame) -> set[str]:
    """The first, middle and last committed size of every cell, every seed."""
    chosen = set()
    for _, cell in runs.groupby("cell"):
        sizes = np.sort(cell[SIZE].unique())
        picks = {sizes[0], sizes[len(sizes) // 2], sizes[-1]}
        chosen |= set(cell.loc[cell[SIZE].isin(picks), "run_id"])
    return chosen


def nearest_runs(runs: pd.DataFrame, proposal: dict, used: set[str]) -> tuple[int, list[str]]:
    """The committed size of the proposal's cell nearest to its size (log), and the runs
    there with its seeds that are not used yet."""
    cell = runs[runs["cell"] == proposal["cell"]]
    sizes = np.sort(cell[SIZE].unique())
    size = int(sizes[np.argmin(np.abs(np.log(sizes / proposal[SIZE])))])
    there = cell[(cell[SIZE] == size) & cell[REPLICATE_SEED].isin(proposal["seeds"])]
    return size, sorted(set(there["run_id"]) - used)


def summary(result, goal: dict[str, float], full: pd.DataFrame) -> dict:
    """A fit's exponents, half-widths, whether they are within 10% of the full grid's, and
    whether each interval holds the full grid's estimate."""
    widths = half_widths(result.exponents)
    truth = dict(zip(full["term"], full["estimate"], strict=True))
    return {
        "exponents": result.exponents[["term", "estimate", "lo", "hi"]].to_dict("records"),
        "half_widths": widths,
        "within_10pct": all(widths[t] <= TOLERANCE * goal[t] for t in goal),
        "holds_full_estimate": all(
            r.lo <= truth[r.term] <= r.hi for r in result.exponents.itertuples()
        ),
    }


def replay(frame: pd.DataFrame, runs: pd.DataFrame, options: FitOptions, target: float,
           max_runs: int | None, full) -> dict:  # fmt: skip
    goal = half_widths(full.exponents)
    used = start(runs)
    rounds = []
    while True:
        result = fit(frame[frame["run_id"].isin(used)], options)
        chosen = runs[runs["run_id"].isin(used)]
        record = {
            "round": len(rounds),
            "n_runs": len(used),
            "sizes_per_cell": chosen.groupby("cell")[SIZE].nunique().to_dict(),
            **summary(result, goal, full.exponents),
        }
        rounds.append(record)
        found = refinement(frame[frame["run_id"].isin(used)], options, target)
        picks, claimed = [], set()
        for proposal in found.proposals.to_dict("records"):
            size, ids = nearest_runs(runs, proposal, used | claimed)
            claimed |= set(ids)
            if ids:
                picks.append((proposal, size, ids))
        room = math.inf if max_runs is None else max_runs - len(used)
        taken = budgeted([len(ids) for _, _, ids in picks], room)
        record["proposed"] = [
            {
                "cell": p["cell"],
                "proposed_P": int(p[SIZE]),
                "committed_P": size,
                "runs": len(ids),
                "taken": bool(t),
                "reason": p["reason"],
            }  # fmt: skip
            for (p, size, ids), t in zip(picks, taken, strict=True)
        ]
        added = {rid for (_, _, ids), t in zip(picks, taken, strict=True) if t for rid in ids}
        if not added:
            record["stopped"] = (
                "every bracket meets the target"
                if not len(found.proposals)
                else "over the budget"
                if picks
                else "no committed size nearer to a proposal than the sizes used"
            )
            return {"rounds": rounds, "crossings": result.crossings}
        used |= added


def row(*cells) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


YES = {True: "yes", False: "no"}


def exponent_cells(entry: dict, goal: dict[str, float]) -> list[str]:
    """Each exponent: estimate [interval] (half-width = its ratio to the full grid's)."""
    cells = []
    for e in entry["exponents"]:
        width = entry["half_widths"][e["term"]]
        interval = f"{e['estimate']:.3f} [{e['lo']:.3f}, {e['hi']:.3f}]"
        cells.append(f"{interval} ({width:.3f} = {width / goal[e['term']]:.2f}x)")
    return cells


def verdicts(entry: dict) -> list[str]:
    return [YES[entry["within_10pct"]], YES[entry["holds_full_estimate"]]]


VERDICTS = ["half-widths within 10%", "intervals hold the full grid's estimates"]


def header(first: list[str], terms: list[str]) -> list[str]:
    names = [*first, *(f"{t} [95%] (half-width)" for t in terms), *VERDICTS]
    return [row(*names), row(*["---:"] * (len(names) - 2), "---", "---")]


def rounds_markdown(name: str, out: dict, full: dict) -> list[str]:
    goal = full["half_widths"]
    lines = [f"### {name}", "", *header(["round", "runs", "sizes per cell"], list(goal))]
    for r in out["rounds"]:
        sizes = "-".join(map(str, sorted(set(r["sizes_per_cell"].values()))))
        lines.append(row(r["round"], r["n_runs"], sizes, *exponent_cells(r, goal), *verdicts(r)))
    lines.append(row("full grid", full["n_runs"], 9, *exponent_cells(full, goal), "", ""))
    return [*lines, "", f"Stopped: {out['rounds'][-1]['stopped']}.", ""]


def crossings_markdown(final: pd.DataFrame, full: pd.DataFrame, levels: tuple) -> list[str]:
    keep = ["cell", "k", "P_star", "P_lo", "P_hi"]
    both = full[keep].merge(final[keep], on=["cell", "k"], suffixes=("_full", "_refined"))
    both = both[both["k"].between(*levels)]
    lines = ["| cell | k | full grid P*_k [95%] | refined P*_k [95%] |", "|---|---:|---:|---:|"]
    for r in both.itertuples():
        lines.append(
            f"| {r.cell} | {r.k} | {r.P_star_full:,.0f} [{r.P_lo_full:,.0f}, {r.P_hi_full:,.0f}] "
            f"| {r.P_star_refined:,.0f} [{r.P_lo_refined:,.0f}, {r.P_hi_refined:,.0f}] |"
        )
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("table", type=Path, help="a table of `rhmscale collect -o`")
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--levels", default="2-")
    parser.add_argument("--target", type=float, default=1.25)
    parser.add_argument("--max-runs", type=int, required=True, help="the budget of the replay")
    parser.add_argument("--budgets", type=int, nargs="*", default=[],
                        help="also replay with each of these budgets (one line each)")  # fmt: skip
    args = parser.parse_args()
    frame = read_table(args.table)
    options = FitOptions(levels=args.levels)
    runs = with_cells(frame).groupby("run_id").first().reset_index()
    full_fit = fit(frame, options)
    goal = half_widths(full_fit.exponents)
    full = {"n_runs": int(frame["run_id"].nunique()), **summary(full_fit, goal, full_fit.exponents)}
    levels = (int(args.levels.split("-")[0]), 99)
    content = {
        "full_grid": full,
        "options": vars(args) | {"table": str(args.table), "out": str(args.out)},
    }
    text = []
    for name, budget in ((f"budget {args.max_runs}", args.max_runs), ("no budget", None)):
        out = replay(frame, runs, options, args.target, budget, full_fit)
        text += rounds_markdown(f"{name} (target {args.target})", out, full)
        text += ["P*_k of the last round beside the full grid's:", ""]
        text += crossings_markdown(out["crossings"], full_fit.crossings, levels)
        content[name] = out["rounds"]
    if args.budgets:
        text += ["### the last round's fit for each budget", ""]
        text += header(["budget", "runs used", "rounds"], list(goal))
        content["budgets"] = []
        for budget in args.budgets:
            last = replay(frame, runs, options, args.target, budget, full_fit)["rounds"][-1]
            content["budgets"].append({"budget": budget, **last})
            cells = exponent_cells(last, goal)
            text.append(row(budget, last["n_runs"], last["round"], *cells, *verdicts(last)))
        text.append("")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "replay.md").write_text("\n".join(text))
    (args.out / "replay.json").write_text(json.dumps(json_safe(content), indent=1) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
