"""Can the fitted cells tell the regressors apart? Checked before the exponent fit.

A regressor whose grammar letter does not vary across the fitted cells measures no effect of
that letter: one that also reads the level (`(k+1) log m` with one m) is named in a warning,
its exponent being the slope across levels (a constant, `log v` with one v, is refused with the
design's other checks, exponents.check_design).

A science key that varies across the fitted cells but enters no regressor (s without `log s`,
L, the width, the architecture ...) puts its effect on the regressors that move with it:
named in a warning, and the fit is refused when a regressor is (nearly) a function of that key
on these cells, since its exponent would then be that key's effect as much as its own.
Regressors (nearly) linear in one another on these points are named likewise: refused when
exactly so, a warning (wide intervals) when nearly.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rhmscale.config import GRAMMAR_KEYS
from rhmscale.errors import UserError
from rhmscale.results.theory import REGRESSOR_VARIABLES

# Share of a column's variance explained above which it counts as determined ("confounded",
# "collinear"), and above which a warning is due.
DETERMINED = 0.99
NEARLY = 0.9
SHORT = {column: short for short, column in GRAMMAR_KEYS.items()}


def spread(column: np.ndarray) -> float:
    """Sum of squares about the mean; 0 for no points (a fit with nothing measured)."""
    return float(np.sum((column - column.mean()) ** 2)) if column.size else 0.0


def explained_by_groups(column: np.ndarray, groups: pd.Series) -> float:
    """Share of the column's variance between the groups (1: a function of the grouping)."""
    total = spread(column)
    if total == 0:
        return 0.0
    means = pd.Series(column).groupby(groups.to_numpy()).transform("mean").to_numpy()
    return 1.0 - float(np.sum((column - means) ** 2)) / total


def explained_linearly(column: np.ndarray, others: np.ndarray) -> float:
    """R² of the column on the other columns (an intercept among them)."""
    total = spread(column)
    if total == 0:
        return 0.0
    coef, *_ = np.linalg.lstsq(others, column, rcond=None)
    return 1.0 - float(np.sum((column - others @ coef) ** 2)) / total


def values_of(column: pd.Series) -> str:
    return ", ".join(map(str, sorted(column.unique())))


def regressor_for(key: str) -> str:
    """The regressor that would carry a key's effect, or advice when there is none."""
    short = SHORT.get(key)
    carriers = [name for name, used in REGRESSOR_VARIABLES.items() if used == {short}]
    label = SHORT.get(key, key)
    return f"add '{carriers[0]}' to --regressors" if carriers else f"no regressor carries {label}"


def fixed_letters(keys: pd.DataFrame, names: list[str]) -> list[str]:
    """Warnings for the regressors that read the level and a grammar letter with one value on
    the fitted cells: the exponent is then the slope across levels, in units of that letter's
    log, not an effect of the letter. (One that reads only such a letter is a constant,
    refused by exponents.check_design.)"""
    warnings = []
    for name in names:
        if "k" not in REGRESSOR_VARIABLES[name]:
            continue
        letters = sorted(REGRESSOR_VARIABLES[name] - {"k"})
        fixed = [
            s for s in letters if GRAMMAR_KEYS[s] in keys and keys[GRAMMAR_KEYS[s]].nunique() == 1
        ]
        if fixed:
            values = ", ".join(f"{short}={keys[GRAMMAR_KEYS[short]].iloc[0]}" for short in fixed)
            letter = " and ".join(fixed)
            warnings.append(
                f"'{name}': {values} in every fitted cell, so its exponent is the growth of "
                f"P*_k from level to level (in units of log {fixed[0]}), not an effect of "
                f"{letter}: add cells where {letter} {'vary' if len(fixed) > 1 else 'varies'} "
                "to measure that"
            )
    return warnings


def check_identifiable(
    points: pd.DataFrame, cell_keys: pd.DataFrame, names: list[str], design: np.ndarray
) -> list[str]:
    """Warnings on the fitted design; UserError when it cannot separate the regressors.

    points: the measured P*_k that enter the fit (a "cell" column); cell_keys: one row per
    cell, its science keys (columns) as in the runs' configs; design: intercept + regressors.
    """
    warnings = []
    used = set().union(*(REGRESSOR_VARIABLES[name] for name in names))
    keys = cell_keys.loc[cell_keys.index.isin(points["cell"])]
    warnings += fixed_letters(keys, names)
    left_out = [k for k in keys.columns if keys[k].nunique() > 1 and SHORT.get(k) not in used]
    per_point = {key: points["cell"].map(keys[key]) for key in left_out}
    for j, name in enumerate(names, start=1):
        column = design[:, j]
        confounders = [
            key for key in left_out if explained_by_groups(column, per_point[key]) >= DETERMINED
        ]
        if confounders:
            labels = [SHORT.get(key, key) for key in confounders]
            first = confounders[0]
            plural = len(labels) > 1
            advice = "; ".join(regressor_for(k) for k in confounders)
            raise UserError(
                f"'{name}' cannot be told apart from {' and '.join(labels)} on these cells: "
                f"{', '.join(f'{SHORT.get(k, k)} ({values_of(keys[k])})' for k in confounders)} "
                f"{'vary' if plural else 'varies'}, {'enter' if plural else 'enters'} no "
                f"regressor, and '{name}' is (nearly) a function of {'them' if plural else 'it'} "
                f"on the fitted points, so its exponent would carry that effect. "
                f"{advice[0].upper()}{advice[1:]} (with cells where they vary apart), select "
                f'cells (--where "{labels[0]}={keys[first].iloc[0]}"), or add cells'
            )
    for key in left_out:
        label = SHORT.get(key, key)
        warnings.append(
            f"{label} varies across the fitted cells ({values_of(keys[key])}) and enters no "
            f"regressor: its effect lands on the regressors that move with it "
            f'({regressor_for(key)}, or --where "{label}=...")'
        )
    for j, name in enumerate(names, start=1):
        others = np.delete(design, j, axis=1)
        share = explained_linearly(design[:, j], others)
        if share < NEARLY:
            continue
        partners = [
            other
            for i, other in enumerate(names, start=1)
            if i != j and explained_linearly(design[:, j], design[:, [0, i]]) >= NEARLY
        ]
        together = f"'{name}'" + (f" and {', '.join(map(repr, partners))}" if partners else "")
        if share >= 1 - 1e-9:
            raise UserError(
                f"regressors {together} are collinear on the measured points (each is a linear "
                "function of the others): these cells cannot separate them; drop one "
                "(--regressors), select cells (--where), or add cells where they vary apart"
            )
        warnings.append(
            f"'{name}' is {share:.0%} explained by the other regressors on the measured points: "
            "its interval is wide and its estimate trades off with theirs"
        )
    return warnings
