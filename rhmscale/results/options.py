"""The fit's settings (FitOptions) and their check against the collected table.

One dataclass carries every choice a user makes on the command line (threshold, evaluation,
metric, regressors, theory, bootstrap), so each stage of the fit reads the same settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from rhmscale.bounds import OPTIONS
from rhmscale.errors import UserError
from rhmscale.results.theory import DEFAULT_REGRESSORS, DEFAULT_THEORY


@dataclass
class FitOptions:
    threshold: float = 0.5
    # Which evaluation of each run: "best" (lowest val/loss: early stopping, before the model
    # memorises its training set, whose copies would count as grammatical), "final", or a
    # training step (each run's last evaluation at or before it).
    at: str = "best"
    # Among generated samples that are not copies of training sequences: a copy is always
    # grammatical, so gen/acc_l{k} would count memorisation as learned rules (rhm/metrics.py).
    metric: str = "gen/novel_acc_l{k}"
    regressors: str = DEFAULT_REGRESSORS
    theory: str = DEFAULT_THEORY
    # Levels whose P*_k enter the exponent fit ("all", "2-", "2-3", "1"); the P*_k table keeps
    # every level. Level 1 can follow another law: its rules can be read off the s-tuples seen.
    levels: str = "all"
    # Cells to fit, by their config ("s=2", "L=3, v=16|32"; cells.select_cells); "" = all.
    where: str = ""
    n_boot: int = 1000
    ci: float = 0.95
    seed: int = 0


def level_range(levels: str) -> tuple[int, float]:
    """'all' -> (1, inf); '2-' -> (2, inf); '2-3' -> (2, 3); '1' -> (1, 1)."""
    text = levels.replace(" ", "")
    if text == "all":
        return 1, float("inf")
    low, dash, high = text.partition("-")
    if not low.isdigit() or not (high.isdigit() or high == "") or int(low) < 1:
        raise UserError(
            f"--levels {levels!r}: write all, a level (2), a range (2-3) or an open range (2-)"
        )
    top = float("inf") if dash and not high else int(high or low)
    if top < int(low):
        raise UserError(f"--levels {levels!r}: the range is empty; write the lower level first")
    return int(low), top


def check_options(frame: pd.DataFrame, options: FitOptions) -> None:
    """Bad settings, or a metric the runs did not record, as UserErrors that say what to do."""
    level_range(options.levels)
    if not (bound := OPTIONS["--threshold"]).holds(options.threshold):
        raise UserError(f"--threshold {options.threshold}: choose a value {bound.text}")
    try:
        options.metric.format(k=1)
    except (KeyError, IndexError, ValueError):
        raise UserError(
            f"--metric {options.metric!r}: only '{{k}}' (the level) may stand in braces, "
            "e.g. gen/novel_acc_l{k}"
        ) from None
    if "{k}" not in options.metric:
        raise UserError(
            f"--metric {options.metric!r} needs '{{k}}' for the level, e.g. gen/acc_l{{k}}"
        )
    if frame.empty:
        raise UserError("no finished runs to fit")
    check_levels(frame, options.levels)
    if options.metric.format(k=1) not in frame.columns:
        levelled = sorted(
            {
                c.rsplit("_l", 1)[0] + "_l{k}"
                for c in frame.columns
                if c[-1:].isdigit() and "_l" in c
            }
        )
        raise UserError(
            f"metric {options.metric!r} is not recorded; choose from: {', '.join(levelled)}"
        )


def check_levels(frame: pd.DataFrame, levels: str) -> None:
    """--levels names levels that the collected runs' grammars have (1 to grammar.L)."""
    if "grammar.L" not in frame.columns or frame["grammar.L"].isna().all():
        return
    low, top = level_range(levels)
    depths = sorted({int(x) for x in frame["grammar.L"].dropna()})
    deepest = depths[-1]
    if low > deepest or (top != float("inf") and top > deepest):
        have = ", ".join(map(str, depths))
        raise UserError(
            f"--levels {levels}: no such level; the runs' grammars have L = {have}, so levels "
            f"1 to {deepest} (e.g. --levels 2-{deepest})"
        )
