"""Where a sweep's P*_k are still loose, and which runs would pin them down (`sweep refine`).

For every cell and fitted level, sample_complexity measures P*_k inside a bracket: the two
sizes of the cell either side of its crossing (crossing.crossing_brackets, the fit's rule).
What narrows each point's interval:
  sizes   a bracket wider than the target ratio gets a size at its log-midpoint; levels whose
          crossings share a bracket share the size;
  edge    a censored point ("<= P_min", "> P_max") gets one size beyond the grid's edge, one
          of the cell's outermost steps further (within the grammar's distinct sequences);
  seeds   a point whose seed-bootstrap interval reaches past its bracket by more than the
          target ratio is limited by seed noise, not by the grid: the bracket's two sizes get
          more seeds.
A point whose bracket meets the target and whose interval stays within it is done. The
proposals are runs of finished cells' sizes and seeds; sweeps/refine.py turns them into grid
blocks, leaves out runs the sweep already holds and keeps to the budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rhmscale.config import REPLICATE_SEED
from rhmscale.results.cells import (
    SIZE,
    by_cell,
    cell_keys,
    grammar_of,
    rows_at,
    select_cells,
    with_cells,
)
from rhmscale.results.crossing import BELOW
from rhmscale.results.options import FitOptions, check_options, level_range
from rhmscale.results.sample_complexity import sample_complexity
from rhmscale.results.theory import Theory
from rhmscale.sequences import n_sequences

EDGE_PRIORITY = math.inf  # an unmeasured point first: its P*_k is only a bound


@dataclass
class Refinement:
    # One row per cell and fitted level: P*_k, its bracket (P_left, P_right), the bracket's
    # ratio, its interval, and `action`: what is proposed for it ("" when it meets the target).
    points: pd.DataFrame
    # One row per proposal: cell, its science keys (config columns), data.P, seeds (a list),
    # priority (higher first), reason.
    proposals: pd.DataFrame


def new_seeds(used: set[int], preferred: list[int], n: int) -> list[int]:
    """n seeds not in `used`: the preferred ones first (a cell's usual seeds), then the
    smallest unused integers."""
    chosen = [s for s in preferred if s not in used][:n]
    candidate = 0
    while len(chosen) < n:
        if candidate not in used and candidate not in chosen:
            chosen.append(candidate)
        candidate += 1
    return chosen


def refinement(
    frame: pd.DataFrame, options: FitOptions, target: float = 1.25, seeds: int | None = None
) -> Refinement:
    """What to run next so that every fitted P*_k is pinned to `target` (a ratio of sizes).

    frame: collect()'s table of the sweep's finished runs; options: the fit's settings (which
    evaluation, metric, threshold, levels and cells); seeds: seeds per proposed size, or added
    at a seed-limited bracket (default: as many as the cell's sizes have).
    """
    check_options(frame, options)
    rows = rows_at(with_cells(select_cells(frame, options.where)), options.at)
    points, _ = sample_complexity(
        rows, options, Theory(options.theory), np.random.default_rng(options.seed)
    )
    low, high = level_range(options.levels)
    points = points[points["k"].between(low, high)].reset_index(drop=True)
    points["bracket_ratio"] = points["P_right"] / points["P_left"]
    points["action"] = ""
    proposals: list[dict] = []
    for cell, group in by_cell(rows):
        mine = points[points["cell"] == cell]
        if len(mine):
            found, actions = CellRuns(group, target, seeds).proposals(mine)
            proposals += [{"cell": cell, **proposal} for proposal in found]
            points.loc[mine.index, "action"] = actions
    table = pd.DataFrame(proposals, columns=["cell", SIZE, "seeds", "priority", "reason"])
    table = table.sort_values(
        ["priority", "cell", SIZE], ascending=[False, True, True], kind="stable"
    )
    return Refinement(points, table.join(cell_keys(rows), on="cell").reset_index(drop=True))


class CellRuns:
    """One cell's finished runs: its sizes, the seeds at each, the largest size it allows."""

    def __init__(self, group: pd.DataFrame, target: float, seeds: int | None):
        self.target = target
        self.sizes = np.sort(group[SIZE].unique()).astype(float)
        self.used = {int(P): set(g[REPLICATE_SEED].astype(int)) for P, g in group.groupby(SIZE)}
        common = set.intersection(*self.used.values())
        self.usual = sorted(common or set.union(*self.used.values()))  # a new size's seeds
        self.n = seeds or int(np.median([len(s) for s in self.used.values()]))
        n_test = int(group["data.n_test"].iloc[0]) if "data.n_test" in group else 0
        self.top = n_sequences(**grammar_of(group)) - n_test

    def beyond_edge(self, below: bool) -> int | None:
        """One of the cell's outermost steps beyond its grid; None where there is no room."""
        sizes = self.sizes
        step = (sizes[1] / sizes[0] if below else sizes[-1] / sizes[-2]) if len(sizes) > 1 else 2
        if below:
            P = round(sizes[0] / step)
            return P if 1 <= P < sizes[0] else None
        P = min(round(sizes[-1] * step), self.top)
        return P if sizes[-1] < P else None

    def proposals(self, points: pd.DataFrame) -> tuple[list[dict], list[str]]:
        """The cell's proposals (size, seeds, priority, reason) and, per point, its action."""
        sizes: dict[int, list] = {}  # new size -> [priority, reasons]
        found, actions = [], []
        for point in points.itertuples():
            wanted, seeded, notes = self.for_point(point)
            for P, priority, reason in wanted:
                # A size shared by brackets of several levels narrows each: worth their sum.
                entry = sizes.setdefault(P, [0.0, []])
                entry[0] += priority
                entry[1].append(reason)
            found += seeded
            actions.append("; ".join([*(reason for *_, reason in wanted), *notes]))
        for P, (priority, reasons) in sorted(sizes.items()):
            seeds = new_seeds(set(), self.usual, self.n)
            reason = "; ".join(reasons)
            found.append({SIZE: P, "seeds": seeds, "priority": priority, "reason": reason})
        return found, actions

    def for_point(self, point) -> tuple[list[tuple[int, float, str]], list[dict], list[str]]:
        """One P*_k: the new sizes it wants (size, priority, reason), the seeds it wants at
        existing sizes (proposals), and notes on what cannot be refined."""
        level = f"level {point.k}"
        if point.censored:
            P = self.beyond_edge(point.censored == BELOW)
            if P is None:
                return [], [], ["censored at the edge: no size beyond it"]
            return [(P, EDGE_PRIORITY, f"{level} censored {point.censored}: P={P}")], [], []
        wanted, seeded, notes = [], [], []
        left, right = point.P_left, point.P_right
        if point.bracket_ratio > self.target:
            P = round(math.sqrt(left * right))
            if left < P < right:
                wanted.append((P, math.log(point.bracket_ratio), f"{level}: P={P}"))
            else:
                notes.append("bracket of adjacent integers")
        if point.P_lo < left / self.target or point.P_hi > right * self.target:
            # Seed noise moves the crossing out of its bracket: more seeds at its two ends.
            spread = math.log(point.P_hi / point.P_lo) - math.log(right / left)
            reason = f"{level}: {self.n} more seeds at P={left:.0f}, {right:.0f}"
            seeded = [
                {
                    SIZE: P,
                    "seeds": new_seeds(self.used[P], [], self.n),
                    "priority": spread,
                    "reason": reason,
                }  # fmt: skip
                for P in (int(left), int(right))
            ]
            notes.append(reason)
        return wanted, seeded, notes
