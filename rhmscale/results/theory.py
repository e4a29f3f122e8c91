"""Regressors of the exponent fit and the theory's prediction of P_k, as user-typed formulas.

A theory is an arithmetic expression in v, m, s, L and k (e.g. the paper's `v * m^(k+1)`),
parsed and evaluated safely by rhmscale.formula.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rhmscale.config import GRAMMAR_NAMES
from rhmscale.errors import UserError
from rhmscale.formula import Formula

DEFAULT_THEORY = "v * m^(k+1)"
DEFAULT_REGRESSORS = "log v, (k+1) log m"

Variables = dict[str, np.ndarray]  # v, m, s, L, k: one entry per (cell, level) point

REGRESSORS: dict[str, Callable[[Variables], np.ndarray]] = {
    "log v": lambda x: np.log(x["v"]),
    "log m": lambda x: np.log(x["m"]),
    "k": lambda x: x["k"],
    "k log m": lambda x: x["k"] * np.log(x["m"]),
    "(k+1) log m": lambda x: (x["k"] + 1) * np.log(x["m"]),
    "log s": lambda x: np.log(x["s"]),
    "L": lambda x: x["L"],
}
# The variables each regressor reads: a science key in none of them is left out of the fit.
REGRESSOR_VARIABLES: dict[str, set[str]] = {
    "log v": {"v"},
    "log m": {"m"},
    "k": {"k"},
    "k log m": {"k", "m"},
    "(k+1) log m": {"k", "m"},
    "log s": {"s"},
    "L": {"L"},
}


def parse_regressors(text: str) -> list[str]:
    """'log v, (k+1) log m' -> canonical names; unknown ones listed against the valid ones."""
    by_squeezed = {name.replace(" ", ""): name for name in REGRESSORS}
    names = []
    for raw in text.split(","):
        if not raw.strip():
            continue
        name = by_squeezed.get(raw.replace(" ", ""))
        if name is None:
            raise UserError(
                f"unknown regressor '{raw.strip()}'; choose from: {', '.join(REGRESSORS)}"
            )
        if name in names:
            raise UserError(f"regressor '{name}' is listed twice")
        names.append(name)
    if not names:
        raise UserError(f"no regressors given; choose from: {', '.join(REGRESSORS)}")
    return names


def design_matrix(names: list[str], x: Variables) -> np.ndarray:
    """Columns: intercept, then one per regressor."""
    return np.column_stack([np.ones(len(x["k"]))] + [REGRESSORS[n](x).astype(float) for n in names])


_NAMES = (*GRAMMAR_NAMES, "k")


class Theory(Formula):
    """P_k predicted by a formula in v, m, s, L, k; '^' is accepted for powers."""

    def __init__(self, formula: str = DEFAULT_THEORY):
        super().__init__(formula, _NAMES, "theory")

    def __call__(self, x: Variables) -> np.ndarray:
        """P_k at each point; UserError where it is not a positive finite number (a formula
        that overflows, divides by zero or goes negative predicts no sample size)."""
        values = self.evaluate(x) * np.ones(len(x["k"]))
        bad = ~(np.isfinite(values) & (values > 0))
        if bad.any():
            i = int(np.argmax(bad))
            where = ", ".join(f"{n}={x[n][i]:g}" for n in _NAMES)
            raise UserError(
                f"theory '{self.formula}' gives P_k = {values[i]:g} at {where}; it must be a "
                "positive finite number at every cell and level"
            )
        return values

    def coefficients(self, names: list[str], x: Variables) -> tuple[np.ndarray, bool]:
        """The exponents the theory predicts for these regressors on these points.

        log P_k(theory) is projected on the design (intercept = free prefactor). `exact` is
        false when the theory is not a combination of the regressors (e.g. regressor `k` while
        m varies): the values are then the best linear stand-in, flagged as such.
        """
        design = design_matrix(names, x)
        target = np.log(self(x))
        coef, *_ = np.linalg.lstsq(design, target, rcond=None)
        residual = target - design @ coef
        exact = bool(np.max(np.abs(residual), initial=0.0) < 1e-6 * max(1.0, np.abs(target).max()))
        return coef[1:], exact
