"""Where a seed-averaged curve crosses a threshold, and its bootstrap over seeds.

Used along dataset size P (sample complexity P*_k) and along training time (samples seen at
crossing). The crossing is interpolated between the bracketing points linearly in log x and in
logit(y): accuracy curves are sigmoids of log x, which the logit makes straight, so the
interpolation is not pulled towards the middle of the bracket as a linear one would be.

Which crossing, when a curve is not monotone: along P the LAST upward crossing (`last=True`):
the level counts as learned from the P above which the curve stays above the threshold, so a
dip (a point where runs memorised, a noisy seed) before it does not make P*_k look smaller, and
a curve that ends below the threshold is not learned at the largest P. Along training the FIRST
(when the level was first learned). A curve already above the threshold at its first point
(for `last`: and never below it after) is censored "below" (x* <= x_min), one that never
reaches it (for `last`: that ends below it) "above" (x* > x_max). Censored points are reported,
never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

BELOW, ABOVE = "below", "above"


def logit(y: np.ndarray | float, eps: float = 1e-3) -> np.ndarray:
    y = np.clip(y, eps, 1 - eps)
    return np.log(y / (1 - y))


def crossing_brackets(
    means: np.ndarray, threshold: float, last: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Where each row of `means` (rows x points) crosses: the index `right` of the first point
    after its first (or last) upward crossing, which lies between points right - 1 and right,
    and the censoring code: 0 = measured, -1 = below the first point (right = 0), +1 = above
    the last (right = n). The one statement of the crossing rule; crossings() interpolates in
    the bracket, `sweep refine` adds sizes inside it."""
    above = np.atleast_2d(means) >= threshold
    n = above.shape[1]
    if last:
        # The point after the last one below the threshold, when the curve ends above it.
        below = ~above
        last_below = n - 1 - below[:, ::-1].argmax(axis=1)
        reached, crossed = above[:, -1], below.any(axis=1)
        right = np.where(crossed, last_below + 1, 0)
        code = np.where(~reached, 1, np.where(crossed, 0, -1))
    else:
        right = above.argmax(axis=1)
        reached = above.any(axis=1)
        code = np.where(~reached, 1, np.where(right == 0, -1, 0))
    return np.where(code == 1, n, right), code


def crossings(
    log_x: np.ndarray, means: np.ndarray, threshold: float, last: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """First (or last) upward crossing of each row of `means` (rows x points), in log x.

    Returns (log x*, censoring code): code 0 = measured, -1 = below the first x, +1 = above
    the last x. Censored rows get the bound they are censored at.
    """
    means = np.atleast_2d(means)
    n = len(log_x)
    if n == 1:  # nothing to interpolate: censored on one side or the other
        code = np.where(means[:, 0] >= threshold, -1, 1)
        return np.full(len(means), log_x[0]), code
    right, code = crossing_brackets(means, threshold, last)
    right = np.clip(right, 1, n - 1)
    left = right - 1
    rows = np.arange(len(means))
    y0, y1, target = logit(means[rows, left]), logit(means[rows, right]), logit(threshold)
    frac = np.clip((target - y0) / np.where(y1 > y0, y1 - y0, 1.0), 0.0, 1.0)
    value = log_x[left] + frac * (log_x[right] - log_x[left])
    value = np.where(code == -1, log_x[0], np.where(code == 1, log_x[-1], value))
    return value, code


def values_by(keys: pd.Series, values: pd.Series) -> tuple[np.ndarray, list[np.ndarray]]:
    """Distinct keys (sorted) and, for each, its non-missing values (the seeds measured there):
    the x and per_seed of bootstrap_crossing."""
    keys_np, values_np = keys.to_numpy(dtype=float), values.to_numpy(dtype=float)
    keep = ~np.isnan(values_np)
    keys_np, values_np = keys_np[keep], values_np[keep]
    order = np.argsort(keys_np, kind="stable")
    distinct, starts = np.unique(keys_np[order], return_index=True)
    return distinct, np.split(values_np[order], starts[1:])


@dataclass
class Crossing:
    log_x: float  # log of the crossing (or of the bound it is censored at)
    censored: str  # "" measured, "below" or "above"
    lo: float  # bootstrap interval in log x (nan when censored)
    hi: float
    var: float  # bootstrap variance of log x* (the fit's weights)
    replicates: np.ndarray  # bootstrap replicates of log x*
    # The sizes measured either side of the crossing (its bracket); nan on the open side of a
    # censored point: (nan, x_min) below the grid, (x_max, nan) above it.
    left: float = float("nan")
    right: float = float("nan")


def bootstrap_crossing(
    x: np.ndarray,
    per_seed: list[np.ndarray],
    threshold: float,
    *,
    n_boot: int,
    rng: np.random.Generator,
    ci: float = 0.95,
    last: bool = False,
) -> Crossing:
    """Crossing of the seed mean, with a percentile interval from resampling seeds.

    x: increasing positive sizes; per_seed[j]: the values of the seeds measured at x[j]
    (seeds may be missing at some x). Seeds are resampled with replacement at each x, after
    their deviations from the mean are scaled by sqrt(n/(n-1)): the plain bootstrap of a mean
    of n seeds has (n-1)/n of its variance, a third too little with the usual 3 seeds.
    Replicates that are censored count at their bound. last: the last upward crossing.
    """
    x = np.asarray(x, dtype=float)
    log_x = np.log(x)
    means = np.array([values.mean() for values in per_seed])
    value, code = crossings(log_x, means[None, :], threshold, last)
    censored = {0: "", -1: BELOW, 1: ABOVE}[int(code[0])]
    right = int(crossing_brackets(means[None, :], threshold, last)[0][0])
    bracket = (
        float(x[right - 1]) if right > 0 else float("nan"),
        float(x[right]) if right < len(x) else float("nan"),
    )
    boot = np.empty((n_boot, len(x)))
    for j, values in enumerate(per_seed):
        n = len(values)
        spread = values - values.mean()
        if n > 1:
            spread = spread * np.sqrt(n / (n - 1))
        picks = rng.integers(n, size=(n_boot, n))
        boot[:, j] = values.mean() + spread[picks].mean(axis=1)
    replicates, _ = crossings(log_x, boot, threshold, last)
    if censored:
        nan = float("nan")
        return Crossing(float(value[0]), censored, nan, nan, nan, replicates, *bracket)
    tail = (1 - ci) / 2 * 100
    lo, hi = np.percentile(replicates, [tail, 100 - tail])
    variance = float(robust_variance(replicates))
    return Crossing(float(value[0]), "", float(lo), float(hi), variance, replicates, *bracket)


def robust_variance(replicates: np.ndarray) -> np.ndarray:
    """Per column, from the interquartile range: a few replicates censored at a far bound
    would otherwise dominate a plain variance."""
    q1, q3 = np.percentile(replicates, [25, 75], axis=0)
    return ((q3 - q1) / 1.349) ** 2
