"""A spec's grid -> its runs: every point a validated RunConfig, identical points one run.

Grid values::

    grammar.L: [2, 3, 4]                     # a list
    data.P: {logspace: [16, 4096, 7]}        # log-spaced, rounded to distinct integers
    data.P: {logspace: ["v*m^2/4", "4*v*m^(L+1)", 4]}   # bounds from each point's grammar
    zip:                                     # groups of keys that vary together
      - {grammar.v: [8, 16], grammar.m: [2, 4]}

`grid` may also be a list of such blocks: the runs are the union of each block's product
(e.g. one block per grammar cell, each with its own range of P). Expansion validates every
point before anything is submitted, and identical points collapse to one run id. A logspace
whose bounds are formulas of the grammar's v, m, s, L (rhmscale.formula) is evaluated for each
point's grammar: one block spans many cells, each over its own range (a coarse first grid from
the theory's P_k = v m^(k+1), for `sweep refine` to refine).
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass
from typing import Any

from rhmscale.bounds import MAX_RUNS
from rhmscale.config import GRAMMAR_NAMES, REPLICATE_SEED, GrammarConfig, RunConfig, size_key
from rhmscale.config_io import check_keys, set_dotted, validate_config, validated
from rhmscale.errors import UserError
from rhmscale.formula import Formula
from rhmscale.sweeps.spec import SweepSpec

# Grids beyond MAX_RUNS points are refused before expansion: a typo (n = 10**7) must not
# hang `sweep plan`, and no one submits more from one spec.


def as_number(value: Any) -> float | None:
    """A YAML value as a number: YAML 1.1 reads 1e30 (no dot) as a string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def logspace_ints(lo: Any, hi: Any, n: Any, where: str = "logspace") -> list[int]:
    """n log-spaced integers from lo to hi; rounding duplicates are dropped."""
    lo, hi, count = as_number(lo), as_number(hi), as_number(n)
    numbers = None not in (lo, hi, count) and all(map(math.isfinite, (lo, hi, count)))
    valid = numbers and count == int(count)
    if not (valid and 1 <= count <= MAX_RUNS and 0 < lo <= hi < 2**63):
        raise UserError(
            f"{where}: logspace needs [lo, hi, n], numbers with 0 < lo <= hi < 2**63 and "
            f"1 <= n <= {MAX_RUNS:,}"
        )
    n = int(count)
    if n == 1:
        return [round(lo)]
    step = (math.log(hi) - math.log(lo)) / (n - 1)
    values = [round(math.exp(math.log(lo) + i * step)) for i in range(n)]
    return list(dict.fromkeys(values))


@dataclass(frozen=True)
class GrammarSpace:
    """{logspace: [lo, hi, n]} with formula bounds: the values depend on the point's grammar."""

    bounds: tuple[Formula | float, Formula | float]
    n: Any
    where: str

    def values(self, tree: dict[str, Any]) -> list[int]:
        grammar = validated(GrammarConfig, tree.get("grammar") or {}, f"{self.where}: ")
        x = {name: getattr(grammar, name) for name in GRAMMAR_NAMES}
        lo, hi = (float(b.evaluate(x)) if isinstance(b, Formula) else b for b in self.bounds)
        cell = ", ".join(f"{name}={value}" for name, value in x.items())
        return logspace_ints(lo, hi, self.n, f"{self.where} at {cell} (bounds {lo:g}, {hi:g})")


def logspace_axis(key: str, spec: Any, where: str) -> list[int] | GrammarSpace:
    if not (isinstance(spec, list) and len(spec) == 3):
        raise UserError(f"{where}: '{key}': logspace takes [lo, hi, n], got {spec!r}")
    lo, hi, n = spec
    if not any(is_formula(b) for b in (lo, hi)):
        return logspace_ints(lo, hi, n, f"{where}: '{key}'")
    # Either bound may be a formula: both take one path, a number (or a number YAML read as
    # text, 1e3) as a float, a formula as a Formula, and logspace_ints judges what they give.
    label = f"{where}: '{key}' logspace bound"
    bounds = tuple(
        Formula(b, GRAMMAR_NAMES, label) if is_formula(b) else as_number(b) for b in (lo, hi)
    )
    if None in bounds:
        raise UserError(
            f"{label}s {lo!r}, {hi!r}: each is a number or a formula of {', '.join(GRAMMAR_NAMES)}"
        )
    return GrammarSpace(bounds, n, f"{where}: '{key}'")  # type: ignore[arg-type]


def is_formula(bound: Any) -> bool:
    return isinstance(bound, str) and as_number(bound) is None


def axis_values(key: str, value: Any, where: str) -> list[Any] | GrammarSpace:
    if isinstance(value, list):
        if not value:
            raise UserError(f"{where}: grid key '{key}' has an empty list of values")
        return value
    if isinstance(value, dict):
        if set(value) != {"logspace"}:
            raise UserError(
                f"{where}: grid key '{key}' holds a mapping; the only one allowed is "
                "{logspace: [lo, hi, n]}"
            )
        return logspace_axis(key, value["logspace"], where)
    return [value]  # a scalar: one value


# keys, and one tuple of values per step (or a GrammarSpace, whose values each point decides)
Axis = tuple[tuple[str, ...], list[tuple[Any, ...]] | GrammarSpace]


def block_axes(block: dict[str, Any], where: str) -> list[Axis]:
    if not isinstance(block, dict):
        raise UserError(f"{where}: a grid block must be a mapping of dotted keys to values")
    axes: list[Axis] = []
    for key, value in block.items():
        if key == "zip":
            groups = value if isinstance(value, list) else [value]
            for i, group in enumerate(groups):
                if not isinstance(group, dict) or not group:
                    raise UserError(f"{where}: zip[{i}] must be a mapping of keys to lists")
                columns = {k: axis_values(k, v, f"{where}: zip[{i}]") for k, v in group.items()}
                if any(isinstance(c, GrammarSpace) for c in columns.values()):
                    raise UserError(
                        f"{where}: zip[{i}]: a logspace with formula bounds has a length each "
                        "point decides, so it cannot be zipped; put it beside the zip"
                    )
                lengths = {k: len(v) for k, v in columns.items()}
                if len(set(lengths.values())) != 1:
                    raise UserError(
                        f"{where}: zip[{i}] lists must have equal lengths, got "
                        + ", ".join(f"{k}: {n}" for k, n in lengths.items())
                    )
                axes.append((tuple(columns), list(zip(*columns.values(), strict=True))))
        else:
            values = axis_values(key, value, where)
            axes.append(
                ((key,), values if isinstance(values, GrammarSpace) else [(v,) for v in values])
            )
    return axes


def check_grid_keys(axes: list[Axis], where: str) -> None:
    seen: set[str] = set()
    tree: dict[str, Any] = {}
    for keys, values in axes:
        for i, key in enumerate(keys):
            if key.startswith("tracking."):
                raise UserError(
                    f"{where}: grid key '{key}': tracking is not part of a run (runs that differ "
                    "only in tracking are one run); set it in the sweep's `tracking` section"
                )
            if key in seen:
                raise UserError(f"{where}: grid key '{key}' appears twice")
            seen.add(key)
            set_dotted(tree, key, 1 if isinstance(values, GrammarSpace) else values[0][i])
    check_keys(tree, where)


@dataclass(frozen=True)
class Point:
    """One run of a sweep: its config, and the grid values that made it."""

    config: RunConfig
    values: dict[str, Any]
    run_id: str


@dataclass
class Expansion:
    points: list[Point]
    n_grid_points: int  # before identical points were collapsed


def _copy_tree(tree: dict[str, Any]) -> dict[str, Any]:
    return {k: _copy_tree(v) if isinstance(v, dict) else copy.copy(v) for k, v in tree.items()}


def base_tree(spec: SweepSpec) -> dict[str, Any]:
    """The spec's base with its tracking section merged in (group defaults to the name)."""
    base = _copy_tree(spec.base)
    check_keys(base, f"sweep {spec.name}: base")
    tracking = dict(base.get("tracking") or {})
    tracking.update(spec.tracking)
    tracking.setdefault("group", spec.name)
    base["tracking"] = tracking
    return base


def expand_points(spec: SweepSpec) -> Expansion:
    """Every point of the grid as a validated RunConfig; UserError names a failing point."""
    where = f"sweep {spec.name}"
    base = base_tree(spec)
    blocks = spec.grid if isinstance(spec.grid, list) else [spec.grid]
    if not blocks or all(not b for b in blocks):
        raise UserError(f"{where}: the grid is empty; give at least one key, e.g. seed: [0, 1]")
    points: dict[str, Point] = {}
    n_total = 0
    for b, block in enumerate(blocks):
        bwhere = f"{where}: grid" + (f"[{b}]" if isinstance(spec.grid, list) else "")
        axes = block_axes(block, bwhere)
        if not axes:
            raise UserError(f"{bwhere} is empty")
        check_grid_keys(axes, bwhere)
        n_block = math.prod(  # a grammar's logspace counted at its n, an upper bound
            int(as_number(values.n) or 1) if isinstance(values, GrammarSpace) else len(values)
            for _, values in axes
        )
        if n_total + n_block > MAX_RUNS:
            raise UserError(
                f"{bwhere} has {n_block:,} points ({n_total + n_block:,} so far); a sweep may "
                f"have at most {MAX_RUNS:,}: split it or shorten its axes"
            )
        for tree, values in block_points(base, axes):
            n_total += 1
            label = ", ".join(f"{k}={v}" for k, v in values.items())
            config = validate_config(tree, f"{where}: point {n_total} ({label})")
            rid = config.run_id()
            if rid not in points:
                points[rid] = Point(config, values, rid)
    return Expansion(named(list(points.values())), n_total)


def named(points: list[Point]) -> list[Point]:
    """The points with tracking.name_keys set to the other grid keys whose values differ
    between them (besides v, m, s, L, P and seed), so that W&B names tell their runs apart."""
    always = {f"grammar.{n}" for n in GRAMMAR_NAMES} | {size_key(), REPLICATE_SEED}
    keys = list(dict.fromkeys(key for point in points for key in point.values))
    varying = [
        key
        for key in keys
        if key not in always and len({repr(p.values.get(key)) for p in points}) > 1
    ]
    if not varying:
        return points
    return [
        Point(
            p.config.model_copy(
                update={"tracking": p.config.tracking.model_copy(update={"name_keys": varying})}
            ),
            p.values,
            p.run_id,
        )
        for p in points
    ]


def block_points(base: dict[str, Any], axes: list[Axis]):
    """(config tree, grid values) of every point of a block: the product of its axes, with a
    grammar's logspace evaluated for each combination of the others."""
    fixed = [(keys, values) for keys, values in axes if not isinstance(values, GrammarSpace)]
    spaces = [(keys[0], values) for keys, values in axes if isinstance(values, GrammarSpace)]
    for combo in itertools.product(*(values for _, values in fixed)):
        tree = _copy_tree(base)
        values: dict[str, Any] = {}
        for (keys, _), vals in zip(fixed, combo, strict=True):
            for key, val in zip(keys, vals, strict=True):
                set_dotted(tree, key, val)
                values[key] = val
        for sizes in itertools.product(*(space.values(tree) for _, space in spaces)):
            point_tree, point_values = _copy_tree(tree), dict(values)
            for (key, _), size in zip(spaces, sizes, strict=True):
                set_dotted(point_tree, key, size)
                point_values[key] = size
            yield point_tree, point_values
