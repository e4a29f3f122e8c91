"""Regressors of the exponent fit and the theory's prediction of P_k, as user-typed formulas.

A theory is an arithmetic expression in v, m, s, L and k (e.g. the paper's `v * m^(k+1)`),
parsed with `ast` and evaluated on arrays: no `eval`, so any text a user types is safe.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable

import numpy as np

from rhmscale.errors import UserError

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


_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_FUNCTIONS = {"log": np.log, "exp": np.exp, "sqrt": np.sqrt}
_NAMES = ("v", "m", "s", "L", "k")
MAX_LENGTH = 200


class Theory:
    """P_k predicted by a formula in v, m, s, L, k; '^' is accepted for powers."""

    def __init__(self, formula: str = DEFAULT_THEORY):
        self.formula = formula.strip()
        if len(self.formula) > MAX_LENGTH:
            raise UserError(f"theory formula is {len(self.formula)} characters; keep it under 200")
        try:
            tree = ast.parse(self.formula.replace("^", "**"), mode="eval")
            self._check(tree.body)
        except SyntaxError as exc:
            raise UserError(f"theory '{formula}' is not a formula: {exc.msg}") from None
        except (RecursionError, MemoryError):
            raise UserError(f"theory '{formula}' is nested too deeply") from None
        self._tree = tree.body

    def _check(self, node: ast.AST) -> None:
        ok = (
            isinstance(node, ast.BinOp)
            and type(node.op) in _BINARY
            or isinstance(node, ast.UnaryOp)
            and isinstance(node.op, ast.USub)
            or isinstance(node, ast.Constant)
            and isinstance(node.value, int | float)
            or isinstance(node, ast.Name)
            and node.id in _NAMES
            or isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCTIONS
            and len(node.args) == 1
        )
        if not ok:
            shown = ast.unparse(node)
            raise UserError(
                f"theory '{self.formula}': '{shown}' is not allowed; use numbers, "
                f"{', '.join(_NAMES)}, + - * / ^ and {', '.join(_FUNCTIONS)}()"
            )
        children = node.args if isinstance(node, ast.Call) else list(ast.iter_child_nodes(node))
        for child in children:
            if not isinstance(child, ast.operator | ast.unaryop | ast.expr_context):
                self._check(child)

    def __call__(self, x: Variables) -> np.ndarray:
        """P_k at each point; UserError where it is not a positive finite number (a formula
        that overflows, divides by zero or goes negative predicts no sample size)."""
        with np.errstate(all="ignore"):
            values = np.asarray(self._eval(self._tree, x), dtype=float) * np.ones(len(x["k"]))
        bad = ~(np.isfinite(values) & (values > 0))
        if bad.any():
            i = int(np.argmax(bad))
            where = ", ".join(f"{n}={x[n][i]:g}" for n in _NAMES)
            raise UserError(
                f"theory '{self.formula}' gives P_k = {values[i]:g} at {where}; it must be a "
                "positive finite number at every cell and level"
            )
        return values

    def _eval(self, node: ast.AST, x: Variables):
        if isinstance(node, ast.BinOp):
            return _BINARY[type(node.op)](self._eval(node.left, x), self._eval(node.right, x))
        if isinstance(node, ast.UnaryOp):
            return -self._eval(node.operand, x)
        if isinstance(node, ast.Constant):
            return np.float64(node.value)  # overflows to inf, where a Python float raises
        if isinstance(node, ast.Name):
            return x[node.id].astype(float)
        return _FUNCTIONS[node.func.id](self._eval(node.args[0], x))

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
