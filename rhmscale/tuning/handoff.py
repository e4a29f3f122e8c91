"""A sweep with a study's tuned recipe: `rhmscale sweep submit SPEC --params-from runs/<study>`.

Each grid block of the sweep is split by the study's cells (a cell's grid values pin the
block's axes, or must equal the base's value) and gets that cell's best parameters as fixed
axes; a shared study's parameters go to every block. The result is an ordinary sweep spec, so
the sweep's sweep.yaml records the recipe and the run ids say what was trained. Every run of
the sweep must fall in exactly one tuned cell.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rhmscale.config import RunConfig, config_flat, flatten
from rhmscale.errors import UserError
from rhmscale.sweeps.grid import axis_values, base_tree, expand_points
from rhmscale.sweeps.spec import SweepSpec
from rhmscale.tuning.report import read_best


def restrict(block: dict[str, Any], cell: dict[str, Any], base: dict[str, Any]) -> dict | None:
    """The block's points that lie in the cell, as a block; None when there are none."""
    pinned, out = dict(cell), {}
    for key, value in block.items():
        if key == "zip":
            groups = []
            for group in value if isinstance(value, list) else [value]:
                columns = {k: axis_values(k, v, "zip") for k, v in group.items()}
                keys = [k for k in columns if k in pinned]
                rows = range(len(next(iter(columns.values()))))
                rows = [i for i in rows if all(columns[k][i] == pinned[k] for k in keys)]
                if not rows:
                    return None
                groups.append({k: [vals[i] for i in rows] for k, vals in columns.items()})
                for k in keys:
                    pinned.pop(k)
            out["zip"] = groups
        elif key in pinned:
            if pinned[key] not in axis_values(key, value, "grid"):
                return None
            out[key] = [pinned.pop(key)]
        else:
            out[key] = value
    if any(base.get(key) != v for key, v in pinned.items()):
        return None  # a cell key the block does not vary: the base decides
    return out


def with_params(spec: SweepSpec, study: Path) -> SweepSpec:
    best = read_best(study)
    if not best:
        raise UserError(f"study {study} has no completed trial yet: nothing to take params from")
    blocks = spec.grid if isinstance(spec.grid, list) else [spec.grid]
    varied = {k for b in blocks for k in b if k != "zip"} | {
        k for b in blocks for g in _zips(b) for k in g
    }
    base = config_flat(RunConfig()) | flatten(base_tree(spec))  # not validated: runs are
    grid = []
    for name, tuned in best.items():
        clash = sorted(set(tuned["params"]) & varied)
        if clash:
            raise UserError(
                f"the sweep's grid varies {', '.join(clash)}, which study {name} tuned: drop it "
                "from the grid or from the study"
            )
        for block in blocks:
            part = restrict(block, tuned["cell"], base)
            if part is not None:
                grid.append(part | {k: [v] for k, v in tuned["params"].items()})
    tuned_spec = spec.model_copy(update={"grid": grid})
    keys = {k for tuned in best.values() for k in tuned["params"]}

    def runs(s: SweepSpec) -> list[tuple]:  # each run, its tuned keys left out
        points = expand_points(s).points if s.grid else []
        return sorted(
            tuple(sorted((k, repr(v)) for k, v in config_flat(p.config).items() if k not in keys))
            for p in points
        )

    before, after = runs(spec), runs(tuned_spec)
    if after != before:
        cells = "; ".join(f"{n}: {b['cell'] or 'every cell'}" for n, b in best.items())
        raise UserError(
            f"{len(before)} runs in sweep {spec.name}, {len(after)} with tuned recipes: every run "
            f"must lie in exactly one tuned cell (the study's cells: {cells})"
        )
    return tuned_spec


def _zips(block: dict[str, Any]) -> list[dict[str, Any]]:
    value = block.get("zip", [])
    return value if isinstance(value, list) else [value]
