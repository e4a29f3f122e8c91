"""Weighted least squares of log P*_k with bootstrap confidence intervals.

Weights are the number of seeds behind each point (a seed mean's noise falls as 1/n), not
each point's own bootstrap variance: with a handful of seeds those variances are so noisy
that weighting by them made the exponents scatter 25% more and their 95% intervals cover the
truth 80% of the time on synthetic sweeps (tests/test_fit.py measures the coverage).

The intervals propagate the seed bootstrap: replicate b of every point (its crossing with
resampled seeds) is refitted, so the spread of the coefficients is the seed noise carried
through the fit. When the points scatter around the law more than seed noise explains
(reduced chi^2 > 1: interpolation error, a law that is not quite right), the spread is widened
by sqrt(chi^2) (the Birge ratio), so a misfit shows as wider intervals, not false precision.
Without seed replicates (one seed per size) the fit falls back to a residual bootstrap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rhmscale.results.crossing import robust_variance


@dataclass
class WLSFit:
    coef: np.ndarray  # intercept first
    lo: np.ndarray
    hi: np.ndarray
    r2: float  # weighted
    chi2_red: float  # weighted residuals against the seed variance (nan without it)
    method: str  # how the intervals were made
    residuals: np.ndarray  # y - X coef


def weighted_least_squares(
    design: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray,
    replicates: np.ndarray | None,
    *,
    n_boot: int,
    rng: np.random.Generator,
    ci: float = 0.95,
) -> WLSFit:
    """replicates: the seed-bootstrap replicates of y, shape (n_boot, n_points), or None."""
    root_w = np.sqrt(weights)
    xw = design * root_w[:, None]
    pinv = np.linalg.pinv(xw)
    coef = pinv @ (y * root_w)
    residuals = y - design @ coef
    dof = len(y) - design.shape[1]
    if replicates is not None:
        # Scatter per unit weight against seed noise per unit weight.
        seed_noise = np.mean(weights * robust_variance(replicates))
        chi2_red = float(np.sum(weights * residuals**2) / dof / seed_noise)
        boot = (replicates * root_w) @ pinv.T
        spread = (boot - np.median(boot, axis=0)) * np.sqrt(max(1.0, chi2_red))
        method = "seed bootstrap" + (" x Birge ratio" if chi2_red > 1 else "")
    else:
        spread = residual_bootstrap(xw, y * root_w, pinv, n_boot, rng)
        method, chi2_red = "residual bootstrap", float("nan")
    tail = (1 - ci) / 2 * 100
    lo, hi = coef + np.percentile(spread, [tail, 100 - tail], axis=0)
    mean_w = np.average(y, weights=weights)
    total = np.sum(weights * (y - mean_w) ** 2)
    r2 = 1 - np.sum(weights * residuals**2) / total if total > 0 else float("nan")
    return WLSFit(coef, lo, hi, float(r2), chi2_red, method, residuals)


def residual_bootstrap(
    xw: np.ndarray, yw: np.ndarray, pinv: np.ndarray, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """Coefficient deviations from refitting on resampled leverage-adjusted residuals."""
    fitted = xw @ (pinv @ yw)
    leverage = np.einsum("ij,ji->i", xw, pinv)
    adjusted = (yw - fitted) / np.sqrt(np.clip(1 - leverage, 1e-12, None))
    adjusted -= adjusted.mean()
    picks = rng.integers(len(yw), size=(n_boot, len(yw)))
    return adjusted[picks] @ pinv.T
