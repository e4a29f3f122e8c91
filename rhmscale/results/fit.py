"""From a collected sweep to sample complexities P*_k and the exponents of their scaling law.

fit() runs the stages in order, each in its own module:
  cells.py              one evaluation row per run (options.at), runs grouped in cells;
  sample_complexity.py  P*_k per cell and level, where the metric crosses the threshold;
  exponents.py          log P*_k fitted on the regressors, beside the theory's exponents;
  training_time.py      samples seen until each level is learnt, per cell and P;
  coherence.py          coherence length against P, a power law per cell.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from rhmscale.errors import UserError
from rhmscale.results.cells import cell_keys, rows_at, select_cells, variables, with_cells
from rhmscale.results.coherence import COHERENCE, coherence_fits
from rhmscale.results.design import check_identifiable
from rhmscale.results.exponents import fit_exponents
from rhmscale.results.options import FitOptions, check_options, level_range
from rhmscale.results.sample_complexity import sample_complexity
from rhmscale.results.theory import Theory, design_matrix, parse_regressors
from rhmscale.results.training_time import time_crossings


@dataclass
class FitResult:
    options: FitOptions
    crossings: pd.DataFrame  # one row per cell and level: P*_k, interval, censoring, theory
    exponents: pd.DataFrame  # one row per regressor: estimate, interval, theory, distance
    stats: dict[str, Any]  # R^2, counts, censored points
    time_crossings: pd.DataFrame  # one row per cell, P and level: samples seen at crossing
    coherence: pd.DataFrame  # one row per cell: coherence length ~ P^exponent

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able content; NaN and infinities become None."""
        frames = {
            "exponents": self.exponents,
            "crossings": self.crossings,
            "time_crossings": self.time_crossings,
            "coherence": self.coherence,
        }
        content = {"options": asdict(self.options), "stats": self.stats}
        content.update({name: frame.to_dict("records") for name, frame in frames.items()})
        return json_safe(content)


def json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def fit(frame: pd.DataFrame, options: FitOptions | None = None) -> FitResult:
    """frame: collect()'s table (one row per run and evaluation)."""
    options = options or FitOptions()
    check_options(frame, options)
    theory = Theory(options.theory)
    names = parse_regressors(options.regressors)  # bad input fails before any work
    # Each stage draws from its own stream, so one stage's draws do not shift another's.
    rngs = [np.random.default_rng(options.seed + stage) for stage in range(3)]
    frame = with_cells(select_cells(frame, options.where))
    rows = rows_at(frame, options.at)
    points, replicates = sample_complexity(rows, options, theory, rngs[0])
    low, high = level_range(options.levels)
    fitted = points["k"].between(low, high).to_numpy()
    warnings: list[str] = []
    try:
        measured = points[fitted & (points["censored"] == "").to_numpy()]
        warnings = check_identifiable(
            measured, cell_keys(rows), names, design_matrix(names, variables(measured))
        )
        exponents, stats = fit_exponents(
            points[fitted].reset_index(drop=True), replicates[fitted], names, theory, options,
            rngs[1],
        )  # fmt: skip
    except UserError as exc:
        # The P*_k table is still worth showing; callers decide whether this is fatal.
        exponents, stats = pd.DataFrame(), {"fit_error": str(exc)}
    stats["design_warnings"] = warnings
    stats.update(
        threshold=options.threshold,
        metric=options.metric,
        at=options.at,
        levels=options.levels,
        where=options.where,
    )
    stats["n_runs"] = int(rows["run_id"].nunique())
    return FitResult(
        options,
        points,
        exponents,
        stats,
        time_crossings(frame, options, rngs[2]),
        coherence_fits(rows) if COHERENCE in rows else pd.DataFrame(),
    )
