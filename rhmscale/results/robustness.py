"""How much the fitted exponents move with the fit's choices: the robustness table.

The exponents are refitted on the same collected table with one choice changed at a time: the
threshold, the evaluation (best, final), the per-level metric, or one cell left out. A variant
`moved` an exponent when its estimate lies farther from the baseline's (the options as given)
than half the baseline's interval (`moved_by` > 1, in those half-widths): a deviation from
theory that holds in every variant is the sweep's, one that comes and goes with a choice is
that choice's.

A variant measured on other noise (another evaluation, another metric) differs from the
baseline by chance by about sqrt(2) standard errors, so it crosses one half-width (1.96 of
them) for about 1 exponent in 6 when nothing moved: read `moved_by`. On synthetic sweeps that
follow the law, chance moves stayed below 2.5 half-widths; a metric whose m exponent is 0.7
instead of 1 moves it by about 40 (tests/test_robustness.py).

Every variant keeps the baseline's bootstrap count and seed, so two variants differ by their
choice only, not by their draws. That costs little: robustness() takes about 1.2 s on a
synthetic sweep of 144 runs (14 variants, 0.1 s a fit), the same with 200 or 1000 replicates;
most of a fit is its training-time crossings, which the exponents do not need.

The table as text (Markdown, a summary) is report/export.py's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace

import pandas as pd

from rhmscale.errors import UserError
from rhmscale.results.cells import CELL_ORDER, select_cells, with_cells
from rhmscale.results.fit import FitResult, fit
from rhmscale.results.options import FitOptions

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
EVALUATIONS = ("best", "final")
# Cumulative accuracy (every level up to k right) and the per-level conditional one (level-k
# tuples), each among novel samples and among all samples (copies count as grammatical).
METRICS = (
    "gen/novel_acc_l{k}",
    "gen/acc_l{k}",
    "gen/novel_tuple_acc_l{k}",
    "gen/tuple_acc_l{k}",
)
BASELINE = "baseline"
COLUMNS = ["variant", "term", "estimate", "lo", "hi", "shift", "moved_by", "moved", "note"]


def robustness(
    frame: pd.DataFrame, options: FitOptions | None = None, baseline: FitResult | None = None
) -> pd.DataFrame:
    """One row per variant and term (variant, term, estimate, lo, hi, shift from the baseline,
    moved_by: |shift| in half-widths of the baseline's interval, moved: moved_by > 1, note); the
    baseline's rows first. A variant that cannot be fitted, or a metric these runs did not
    record, is one row with the reason in `note` and no numbers.

    frame: collect()'s table; baseline: fit(frame, options) when the caller has it already.
    """
    options = options or FitOptions()
    baseline = baseline or fit(frame, options)
    rows = result_rows(BASELINE, baseline)
    for name, variant_frame, variant_options, note in variants(frame, options):
        if variant_options is None:
            rows.append(note_row(name, note))
            continue
        try:
            result = fit(variant_frame, variant_options)
        except UserError as exc:  # e.g. --at best without val/loss: the table goes on
            rows.append(note_row(name, str(exc)))
            continue
        rows += result_rows(name, result, note)
    table = pd.DataFrame(rows, columns=COLUMNS)
    reference = table[table["variant"] == BASELINE].set_index("term")
    table["shift"] = table["estimate"] - table["term"].map(reference["estimate"])
    half_width = table["term"].map((reference["hi"] - reference["lo"]) / 2)
    table["moved_by"] = table["shift"].abs() / half_width
    table["moved"] = table["moved_by"] > 1  # NaN (no fit) compares False
    return table


def variants(
    frame: pd.DataFrame, options: FitOptions
) -> Iterator[tuple[str, pd.DataFrame, FitOptions | None, str]]:
    """(name, frame, options, note) of each variant, in the table's order; options None: the
    variant is skipped, the note says why."""
    selected = select_cells(frame, options.where)  # the cells the baseline fits
    for threshold in THRESHOLDS:
        if not math.isclose(threshold, options.threshold):
            yield f"threshold {threshold}", frame, replace(options, threshold=threshold), ""
    for at in EVALUATIONS:
        if at != options.at:
            yield f"at {at}", frame, replace(options, at=at), ""
    for metric in METRICS:
        if metric != options.metric:
            name, column = f"metric {metric}", metric.format(k=1)
            if column not in frame.columns:  # runs from before the metric existed
                yield name, frame, None, "not recorded by these runs"
                continue
            recorded = selected[column].notna().groupby(selected["run_id"]).any()
            partly = (
                "" if recorded.all() else f"recorded by {recorded.sum()} of {len(recorded)} runs"
            )
            yield name, frame, replace(options, metric=metric), partly
    labelled = with_cells(selected)  # labelled as fit() labels them
    for cell in dict.fromkeys(labelled.sort_values(CELL_ORDER)["cell"]):
        kept = selected[(labelled["cell"] != cell).to_numpy()]
        yield f"without cell {cell}", kept, options, ""


def result_rows(name: str, result: FitResult, note: str = "") -> list[dict]:
    if "fit_error" in result.stats:
        return [note_row(name, result.stats["fit_error"])]
    exponents = result.exponents[["term", "estimate", "lo", "hi"]]
    return [{"variant": name, **row, "note": note} for row in exponents.to_dict("records")]


def note_row(name: str, note: str) -> dict:
    return {"variant": name, "term": "", "note": note}
