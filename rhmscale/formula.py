"""Arithmetic formulas a user types (the theory's P_k, a sweep's sizes from a cell's keys),
parsed with `ast` and evaluated on numbers or arrays: no `eval`, so any text is safe.

Numbers, the formula's variable names, + - * / ^ (or **), unary minus and log, exp, sqrt.
"""

from __future__ import annotations

import ast
import operator

import numpy as np

from rhmscale.errors import UserError

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_FUNCTIONS = {"log": np.log, "exp": np.exp, "sqrt": np.sqrt}
MAX_LENGTH = 200


class Formula:
    """A formula in `names`; `label` names it in errors ("theory", "grid 'data.P'")."""

    def __init__(self, text: str, names: tuple[str, ...], label: str = "formula"):
        self.formula = str(text).strip()
        self.names, self.label = names, label
        if len(self.formula) > MAX_LENGTH:
            raise UserError(
                f"{label} formula is {len(self.formula)} characters; keep it under {MAX_LENGTH}"
            )
        try:
            tree = ast.parse(self.formula.replace("^", "**"), mode="eval")
            self._check(tree.body)
        except SyntaxError as exc:
            raise UserError(f"{label} '{text}' is not a formula: {exc.msg}") from None
        except (RecursionError, MemoryError):
            raise UserError(f"{label} '{text}' is nested too deeply") from None
        self._tree = tree.body

    def _check(self, node: ast.AST) -> None:
        ok = (
            isinstance(node, ast.BinOp)
            and type(node.op) in _BINARY
            or isinstance(node, ast.UnaryOp)
            and isinstance(node.op, ast.USub)
            or isinstance(node, ast.Constant)
            and isinstance(node.value, int | float)
            and not isinstance(node.value, bool)
            or isinstance(node, ast.Name)
            and node.id in self.names
            or isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCTIONS
            and len(node.args) == 1
        )
        if not ok:
            shown = ast.unparse(node)
            raise UserError(
                f"{self.label} '{self.formula}': '{shown}' is not allowed; use numbers, "
                f"{', '.join(self.names)}, + - * / ^ and {', '.join(_FUNCTIONS)}()"
            )
        children = node.args if isinstance(node, ast.Call) else list(ast.iter_child_nodes(node))
        for child in children:
            if not isinstance(child, ast.operator | ast.unaryop | ast.expr_context):
                self._check(child)

    def evaluate(self, x: dict[str, np.ndarray | float]) -> np.ndarray:
        """The formula's values (inf or nan where it overflows or divides by zero)."""
        with np.errstate(all="ignore"):
            return np.asarray(self._eval(self._tree, x), dtype=float)

    def _eval(self, node: ast.AST, x: dict[str, np.ndarray | float]):
        if isinstance(node, ast.BinOp):
            return _BINARY[type(node.op)](self._eval(node.left, x), self._eval(node.right, x))
        if isinstance(node, ast.UnaryOp):
            return -self._eval(node.operand, x)
        if isinstance(node, ast.Constant):
            return np.float64(node.value)  # overflows to inf, where a Python float raises
        if isinstance(node, ast.Name):
            return np.asarray(x[node.id], dtype=float)
        return _FUNCTIONS[node.func.id](self._eval(node.args[0], x))
