"""The exponents of the scaling law: log P*_k fitted on the chosen regressors (weighted least
squares with bootstrap intervals, regression.py), each beside the exponent the theory predicts.

Censored P*_k are only bounds: they are left out of the fit and named in its statistics; a
design the measured points cannot pin down (too few points, a regressor that does not vary;
collinear or confounded regressors: design.py) is a UserError that says what to change.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from rhmscale.errors import UserError
from rhmscale.results.cells import variables
from rhmscale.results.options import FitOptions
from rhmscale.results.regression import weighted_least_squares
from rhmscale.results.theory import Theory, design_matrix


def describe_censored(points: pd.DataFrame) -> str:
    side = {"below": "below the smallest P", "above": "above the largest P"}
    return "; ".join(
        f"{row.cell} level {row.k} ({side[row.censored]})" for row in points.itertuples()
    )


def check_design(names: list[str], design: np.ndarray, points: pd.DataFrame) -> None:
    needed = design.shape[1] + 2
    censored = points[points["censored"] != ""]
    if len(points) - len(censored) < needed:
        raise UserError(
            f"too few measured P*_k to fit {len(names)} exponent(s) and a prefactor: need at least "
            f"{needed}, have {len(points) - len(censored)}"
            + (f"; censored: {describe_censored(censored)}" if len(censored) else "")
            + ". Widen those cells' data.P range, add cells, or fit fewer regressors"
        )
    measured = design[(points["censored"] == "").to_numpy()]
    for j, name in enumerate(names, start=1):
        if np.ptp(measured[:, j]) == 0:
            raise UserError(
                f"regressor '{name}' does not vary across the measured points: drop it "
                "(--regressors) or add cells where it differs"
            )


def fit_exponents(
    points: pd.DataFrame,
    replicates: np.ndarray,
    names: list[str],
    theory: Theory,
    options: FitOptions,
    rng: np.random.Generator,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row per regressor (estimate, interval, theory, off_by) and the fit's statistics.

    points, replicates: sample_complexity's P*_k table and its seed-bootstrap replicates;
    names: canonical regressor names (theory.parse_regressors).
    """
    design = (
        design_matrix(names, variables(points)) if len(points) else np.zeros((0, 1 + len(names)))
    )
    check_design(names, design, points)
    measured = (points["censored"] == "").to_numpy()
    used = points[measured]
    y = np.log(used["P_star"].to_numpy())
    seed_replicates = replicates[measured].T if used["log_sd"].max() > 0 else None
    fitted = weighted_least_squares(
        design[measured],
        y,
        used["n_seeds"].to_numpy(dtype=float),
        seed_replicates,
        n_boot=options.n_boot,
        rng=rng,
        ci=options.ci,
    )
    predicted, exact = theory.coefficients(names, variables(used))
    if exact:
        predicted = np.round(predicted, 9)  # 1.0000000000000009 -> 1.0
    rows = []
    for j, name in enumerate(names, start=1):
        estimate, lo, hi = fitted.coef[j], fitted.lo[j], fitted.hi[j]
        half = (hi - estimate) if predicted[j - 1] >= estimate else (estimate - lo)
        rows.append(
            {
                "term": name,
                "estimate": float(estimate),
                "lo": float(lo),
                "hi": float(hi),
                "theory": float(predicted[j - 1]),
                # Distance of the theory from the estimate in units of the interval's half on
                # that side: <= 1 means the theory lies inside the interval.
                "off_by": float(abs(predicted[j - 1] - estimate) / half)
                if half > 0
                else float("inf"),
            }
        )
    censored = points[~measured]
    stats = {
        "r2": fitted.r2,
        "prefactor": float(np.exp(fitted.coef[0])),
        "n_points": int(measured.sum()),
        "n_cells": int(used["cell"].nunique()),
        "n_censored": int(len(censored)),
        "censored": describe_censored(censored),
        "theory": theory.formula,
        "theory_exact": exact,
        "regressors": names,
        "rms_residual": float(np.sqrt(np.mean(fitted.residuals**2))),
        "chi2_red": fitted.chi2_red,
        "interval_method": fitted.method,
    }
    return pd.DataFrame(rows), stats
