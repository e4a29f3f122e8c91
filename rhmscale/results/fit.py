"""From a collected sweep to sample complexities P*_k and the exponents of their scaling law.

A cell is one grammar and training setup: every config column except the dataset size and the
seeds. For each cell and level k, P*_k is where the seed mean of `gen/acc_l{k}` crosses the
threshold (crossing.py); the exponents are a weighted least-squares fit of log P*_k on the
chosen regressors (regression.py), shown beside what the theory predicts (theory.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from rhmscale.errors import UserError
from rhmscale.results.crossing import bootstrap_crossing
from rhmscale.results.regression import weighted_least_squares
from rhmscale.results.theory import (
    DEFAULT_REGRESSORS,
    DEFAULT_THEORY,
    Theory,
    design_matrix,
    parse_regressors,
)

SIZE, SEEDS = "data.P", ("seed", "grammar.seed")
# Config that does not change the science, so it does not split cells.
NOT_CELL = ("tracking.", "train.device", "train.checkpoint_every", "eval.batch_size")
GRAMMAR = {"v": "grammar.v", "m": "grammar.m", "s": "grammar.s", "L": "grammar.L"}


@dataclass
class FitOptions:
    threshold: float = 0.5
    # Which evaluation of each run: "best" (lowest val/loss: early stopping, before the model
    # memorises its training set, whose copies would count as grammatical), "final", or a
    # training step (each run's last evaluation at or before it).
    at: str = "best"
    metric: str = "gen/acc_l{k}"
    regressors: str = DEFAULT_REGRESSORS
    theory: str = DEFAULT_THEORY
    n_boot: int = 1000
    ci: float = 0.95
    seed: int = 0


@dataclass
class FitResult:
    options: FitOptions
    crossings: pd.DataFrame  # one row per cell and level: P*_k, interval, censoring, theory
    exponents: pd.DataFrame  # one row per regressor: estimate, interval, theory, distance
    stats: dict[str, Any]  # R^2, counts, censored points
    time_crossings: pd.DataFrame  # one row per cell, P and level: samples seen at crossing
    coherence: pd.DataFrame  # one row per cell: coherence length ~ P^exponent
    cell_keys: list[str] = field(default_factory=list)

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


# --- cells and evaluation points -------------------------------------------------------------


def config_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c == "seed" or ("." in c and "/" not in c)]


def cell_keys(frame: pd.DataFrame) -> list[str]:
    return [
        c
        for c in config_columns(frame)
        if c != SIZE and c not in SEEDS and not c.startswith(NOT_CELL)
    ]


def cell_labels(frame: pd.DataFrame, keys: list[str]) -> pd.Series:
    """'v=16 m=4 s=2 L=3' plus any other key that differs between cells."""
    varying = [k for k in keys if k not in GRAMMAR.values() and frame[k].nunique() > 1]
    parts = [f"{short}=" + frame[col].astype(str) for short, col in GRAMMAR.items()]
    parts += [f"{k.split('.')[-1]}=" + frame[k].astype(str) for k in varying]
    label = parts[0]
    for part in parts[1:]:
        label = label + " " + part
    return label


def rows_at(frame: pd.DataFrame, at: str) -> pd.DataFrame:
    """One evaluation row per run: the best, the final, or the last at or before a step."""
    if at == "final":
        return frame[frame["final"]]
    if at == "best":
        scored = frame[frame["val/loss"].notna()] if "val/loss" in frame else frame.iloc[:0]
        if scored.empty:
            raise UserError("--at best needs val/loss, which these runs lack; use --at final")
        return scored.loc[scored.groupby("run_id")["val/loss"].idxmin()]
    try:
        step = int(at)
    except ValueError:
        raise UserError(f"--at {at!r}: use best, final or a training step (an integer)") from None
    if step <= 0:
        raise UserError(f"--at {step}: a training step must be positive")
    early = frame[frame["step"] <= step]
    if early.empty:
        raise UserError(f"--at {step}: no run was evaluated at or before step {step}")
    return early.loc[early.groupby("run_id")["step"].idxmax()]


def check_options(frame: pd.DataFrame, options: FitOptions) -> None:
    if not 0 < options.threshold < 1:
        raise UserError(f"--threshold {options.threshold}: choose a value between 0 and 1")
    if "{k}" not in options.metric:
        raise UserError(
            f"--metric {options.metric!r} needs '{{k}}' for the level, e.g. gen/acc_l{{k}}"
        )
    if frame.empty:
        raise UserError("no finished runs to fit")
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


# --- sample complexity -------------------------------------------------------------------


def with_cells(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    keys = cell_keys(frame)
    frame = frame.copy()
    frame["cell"] = cell_labels(frame, keys)
    return frame, keys


def order(frame: pd.DataFrame) -> list[str]:
    """Cells in numeric order of L, v, m, s (labels would sort v=16 before v=8)."""
    return [GRAMMAR[n] for n in ("L", "v", "m", "s")] + ["cell"]


def by_cell(rows: pd.DataFrame):
    return rows.sort_values(order(rows)).groupby("cell", sort=False)


def grammar_of(group: pd.DataFrame) -> dict[str, int]:
    return {short: int(group[col].iloc[0]) for short, col in GRAMMAR.items()}


def values_by(keys: pd.Series, values: pd.Series) -> tuple[np.ndarray, list[np.ndarray]]:
    """Distinct keys (sorted) and, for each, its non-missing values (the seeds measured there)."""
    keys_np, values_np = keys.to_numpy(dtype=float), values.to_numpy(dtype=float)
    keep = ~np.isnan(values_np)
    keys_np, values_np = keys_np[keep], values_np[keep]
    order = np.argsort(keys_np, kind="stable")
    distinct, starts = np.unique(keys_np[order], return_index=True)
    return distinct, np.split(values_np[order], starts[1:])


def sample_complexity(
    rows: pd.DataFrame, options: FitOptions, theory: Theory
) -> tuple[pd.DataFrame, np.ndarray]:
    """P*_k per cell and level, and each point's seed-bootstrap replicates of log P*_k."""
    rng = np.random.default_rng(options.seed)
    records, replicates = [], []
    for cell, group in by_cell(rows):
        g = grammar_of(group)
        for k in range(1, g["L"] + 1):
            sizes, values = values_by(group[SIZE], group[options.metric.format(k=k)])
            if not len(sizes):
                continue
            found = bootstrap_crossing(
                sizes,
                values,
                options.threshold,
                n_boot=options.n_boot,
                rng=rng,
                ci=options.ci,
            )
            replicates.append(found.replicates)
            predicted = float(theory({n: np.array([val]) for n, val in {**g, "k": k}.items()})[0])
            records.append(
                {
                    "cell": cell,
                    **{GRAMMAR[n]: val for n, val in g.items()},
                    "k": k,
                    "P_star": float(np.exp(found.log_x)),
                    "P_lo": float(np.exp(found.lo)),
                    "P_hi": float(np.exp(found.hi)),
                    "censored": found.censored,
                    "log_sd": float(np.sqrt(found.var)),
                    "n_sizes": len(sizes),
                    "n_seeds": int(np.median([len(v) for v in values])),
                    "P_theory": predicted,
                    "ratio": float(np.exp(found.log_x)) / predicted,
                }
            )
    return pd.DataFrame(records), np.array(replicates).reshape(len(records), options.n_boot)


# --- exponents ------------------------------------------------------------------------------


def variables(points: pd.DataFrame) -> dict[str, np.ndarray]:
    out = {n: points[col].to_numpy(dtype=float) for n, col in GRAMMAR.items()}
    out["k"] = points["k"].to_numpy(dtype=float)
    return out


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
    if np.linalg.matrix_rank(measured) < measured.shape[1]:
        raise UserError(
            f"regressors {', '.join(names)} are collinear on the measured points; drop one"
        )


def fit_exponents(
    points: pd.DataFrame, replicates: np.ndarray, options: FitOptions, theory: Theory
) -> tuple[pd.DataFrame, dict[str, Any]]:
    names = parse_regressors(options.regressors)
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
        rng=np.random.default_rng(options.seed + 1),
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


# --- training time and coherence ------------------------------------------------------------


def time_crossings(frame: pd.DataFrame, options: FitOptions) -> pd.DataFrame:
    """Per cell, P and level: the samples seen when the seed mean crosses the threshold."""
    rng = np.random.default_rng(options.seed + 2)
    records = []
    for (cell, P), group in frame.sort_values(order(frame)).groupby(["cell", SIZE], sort=False):
        group = group[group["samples_seen"] > 0]
        for k in range(1, grammar_of(group)["L"] + 1):
            seen, values = values_by(group["samples_seen"], group[options.metric.format(k=k)])
            if not len(seen):
                continue
            found = bootstrap_crossing(
                seen,
                values,
                options.threshold,
                n_boot=min(options.n_boot, 200),
                rng=rng,
                ci=options.ci,
            )
            records.append(
                {
                    "cell": cell,
                    SIZE: int(P),
                    "k": k,
                    "samples_star": float(np.exp(found.log_x)),
                    "samples_lo": float(np.exp(found.lo)),
                    "samples_hi": float(np.exp(found.hi)),
                    "censored": found.censored,
                }
            )
    return pd.DataFrame(records)


def coherence_fits(rows: pd.DataFrame) -> pd.DataFrame:
    """Per cell: seed-mean coherence length s**depth ~ prefactor * P**exponent."""
    records = []
    for cell, group in by_cell(rows):
        means = group.groupby(SIZE)["gen/coherence_length"].mean()
        means = means[means > 0]
        record = {
            "cell": cell,
            "n_sizes": len(means),
            "exponent": np.nan,
            "prefactor": np.nan,
            "r2": np.nan,
        }
        if len(means) >= 2:
            log_p, log_c = np.log(means.index.to_numpy(float)), np.log(means.to_numpy())
            slope, intercept = np.polyfit(log_p, log_c, 1)
            residual = log_c - (slope * log_p + intercept)
            spread = np.sum((log_c - log_c.mean()) ** 2)
            record.update(
                exponent=float(slope),
                prefactor=float(np.exp(intercept)),
                r2=float(1 - np.sum(residual**2) / spread) if spread > 0 else np.nan,
            )
        records.append(record)
    return pd.DataFrame(records)


def fit(frame: pd.DataFrame, options: FitOptions | None = None) -> FitResult:
    options = options or FitOptions()
    check_options(frame, options)
    theory = Theory(options.theory)
    parse_regressors(options.regressors)  # bad input fails before any work
    frame, keys = with_cells(frame)
    rows = rows_at(frame, options.at)
    points, replicates = sample_complexity(rows, options, theory)
    try:
        exponents, stats = fit_exponents(points, replicates, options, theory)
    except UserError as exc:
        # The P*_k table is still worth showing; callers decide whether this is fatal.
        exponents, stats = pd.DataFrame(), {"fit_error": str(exc)}
    stats.update(threshold=options.threshold, metric=options.metric, at=options.at)
    stats["n_runs"] = int(rows["run_id"].nunique())
    return FitResult(
        options,
        points,
        exponents,
        stats,
        time_crossings(frame, options),
        coherence_fits(rows) if "gen/coherence_length" in rows else pd.DataFrame(),
        keys,
    )
