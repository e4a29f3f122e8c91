"""Grow a sweep's spec by the runs `sweep refine` proposes (results/refinement.py says which).

The grown spec is the recorded one with grid blocks appended, one per cell and seed set
(`{<the cell's grid keys>: [...], data.P: [...], seed: [...]}`), so the sweep's sweep.yaml
says how it grew and every run it held before is still one of its runs: a submission of the
grown spec is accepted into the same folder (dispatch.check_same_runs), and status, collect
and fit see one sweep. A proposal's run takes its cell's other grid values from the cell's run
nearest in P (a spec may vary a bookkeeping key with P). Runs the sweep already holds, done or
not, are never proposed again; a budget (--max-runs: the most runs the sweep may hold) is
spent on the proposals in order of priority, whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rhmscale.config import REPLICATE_SEED, cell_columns, cell_of, size_key
from rhmscale.errors import UserError
from rhmscale.sweeps.dispatch import now
from rhmscale.sweeps.grid import Point, expand_points
from rhmscale.sweeps.spec import SweepSpec


@dataclass
class Growth:
    spec: SweepSpec  # the recorded spec with the new blocks (the same spec when none)
    n_before: int  # runs the sweep held
    first_block: int = 0  # the index of the first new grid block in spec.grid
    taken: list[dict[str, Any]] = field(default_factory=list)  # proposals added, + "run_ids"
    left: list[tuple[dict[str, Any], str]] = field(default_factory=list)  # proposal, why not

    @property
    def run_ids(self) -> list[str]:
        """The new runs."""
        return [rid for p in self.taken for rid in p["run_ids"]]

    @property
    def n_added(self) -> int:
        return len(self.run_ids)


def same_value(a: Any, b: Any) -> bool:
    """A config value against a table's (numbers may come back as floats, bools as numbers)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) == bool(b) and str(a).lower() == str(b).lower()
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-12)
    except (TypeError, ValueError):
        return str(a) == str(b)


def in_cell(point: Point, proposal: dict[str, Any]) -> bool:
    cell = cell_of(point.config)
    keys = [k for k in cell_columns(list(proposal)) if not is_missing(proposal[k])]
    return all(same_value(cell[k], proposal[k]) for k in keys)


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def block_for(template: Point, size: int, seeds: list[int]) -> dict[str, Any]:
    """A grid block of one cell: the template run's grid values but size and seed."""
    size_name = size_key()
    kept = {k: [v] for k, v in template.values.items() if k not in (size_name, REPLICATE_SEED)}
    return {**kept, size_name: [int(size)], REPLICATE_SEED: [int(s) for s in seeds]}


def grow(spec: SweepSpec, proposals: list[dict[str, Any]], max_runs: int | None = None) -> Growth:
    """The spec grown by `proposals` (in priority order): dicts with the cell's science keys
    (config columns), the size key, "seeds" (a list) and any notes (cell, reason, priority)."""
    size_name = size_key()
    recorded = expand_points(spec).points
    held = {p.run_id for p in recorded}
    growth = Growth(spec, len(held))
    candidates: list[tuple[dict[str, Any], dict[str, Any], list[str]]] = []
    claimed: set[str] = set()
    # The budget is spent on whole proposals in priority order (one that does not fit is
    # skipped, a smaller one after it may still fit), checked before a proposal is expanded:
    # its new runs are at most its seeds not held at its size, so 100,000 seeds are not
    # expanded for a budget of 10 runs.
    room = math.inf if max_runs is None else max_runs - len(held)
    for proposal in proposals:
        cell = [p for p in recorded if in_cell(p, proposal)]
        if not cell:
            growth.left.append((proposal, "no run of the sweep is in this cell"))
            continue
        size = int(proposal[size_name])
        there = {p.config.seed for p in cell if size == p.config.data.P}
        if len([seed for seed in proposal["seeds"] if seed not in there]) > room:
            growth.left.append((proposal, f"over the budget of {max_runs} runs"))
            continue
        template = min(cell, key=lambda p: abs(math.log(p.config.data.P / size)))
        block = block_for(template, size, proposal["seeds"])
        try:
            points = expand_points(spec.model_copy(update={"grid": [block]})).points
        except UserError as exc:
            growth.left.append((proposal, str(exc)))
            continue
        new = [p for p in points if p.run_id not in held | claimed]
        if not new:
            growth.left.append((proposal, "its runs are in the sweep already"))
            continue
        if len(new) > room:  # another cell's run at this size and seed was not this one's
            growth.left.append((proposal, f"over the budget of {max_runs} runs"))
            continue
        room -= len(new)
        claimed.update(p.run_id for p in new)
        block[REPLICATE_SEED] = [p.config.seed for p in new]
        candidates.append((proposal, block, [p.run_id for p in new]))
    blocks: dict[str, dict[str, Any]] = {}
    for proposal, block, ids in candidates:
        growth.taken.append({**proposal, "run_ids": ids})
        # One block per cell and seed set: the sizes that share them in one list.
        key = repr({k: v for k, v in block.items() if k != size_name})
        merged = blocks.setdefault(key, {**block, size_name: []})
        merged[size_name] = sorted(merged[size_name] + block[size_name])
    if not blocks:
        return growth
    grid = spec.grid if isinstance(spec.grid, list) else [spec.grid]
    grown = spec.model_copy(update={"grid": [*grid, *blocks.values()]})
    growth.first_block = len(grid)
    after = {p.run_id for p in expand_points(grown).points}
    added = {rid for p in growth.taken for rid in p["run_ids"]}
    if after != held | added:  # the blocks hold exactly the runs taken
        raise AssertionError("grown spec's runs differ from the proposals taken")
    growth.spec = grown
    return growth


def growth_record(growth: Growth, target: float, max_runs: int | None) -> dict[str, Any]:
    """jobs.jsonl's line for a submitted refinement: when the sweep grew, by which grid blocks
    of its sweep.yaml (first_block on), and why (each proposal's reason)."""
    return {
        "event": "refine",
        "time": now(),
        "target": target,
        "max_runs": max_runs,
        "runs_before": growth.n_before,
        "runs_added": growth.n_added,
        "first_block": growth.first_block,
        "proposals": [
            {key: p.get(key) for key in ("cell", size_key(), "seeds", "reason")}
            for p in growth.taken
        ],
    }
