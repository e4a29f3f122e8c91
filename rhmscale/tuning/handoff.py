"""A sweep with a study's tuned recipe: `rhmscale sweep submit SPEC --params-from runs/<study>`.

Each grid block of the sweep is split by the study's cells (a cell's grid values pin the
block's axes, or must equal the base's value) and gets that cell's best parameters as fixed
axes; a shared study's parameters go to every block. The result is an ordinary sweep spec, so
the sweep's sweep.yaml records the recipe and the run ids say what was trained. Every run of
the sweep must fall in exactly one tuned cell, and a recipe goes only to runs of the problem it
was tuned on (the same grammar and model keys as one of the study's cells, the tuned keys
aside): a study tuned on v=4 L=2 width 16 does not hand its learning rate to v=16 L=3 width 64
unless asked to (allow_unlike), and then with a warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from rhmscale.config import RunConfig, cell_of, config_flat, flatten
from rhmscale.errors import UserError
from rhmscale.sweeps.grid import axis_values, base_tree, expand_points
from rhmscale.sweeps.spec import SweepSpec
from rhmscale.tuning.dispatch import load_folder
from rhmscale.tuning.report import read_best
from rhmscale.tuning.spec import cells

# What makes a recipe's problem: a learning rate tuned for one grammar and model is not one
# for another (the training budget and evaluation may differ).
PROBLEM_KEYS = ("grammar.", "model.")


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


def problem(config: RunConfig, tuned: set[str]) -> tuple[tuple[str, str], ...]:
    """The grammar and model keys of a run's cell, the tuned keys left out."""
    cell = sorted(cell_of(config).items())
    return tuple((k, repr(v)) for k, v in cell if k.startswith(PROBLEM_KEYS) and k not in tuned)


def describe(key: tuple[tuple[str, str], ...]) -> str:
    return " ".join(f"{k.split('.')[-1]}={v}" for k, v in key)


def study_problems(study: Path, best: dict[str, dict[str, Any]]) -> dict[str, set[tuple]]:
    """Each tuned study's problems: its own cell's (per-cell studies), or every cell's (a
    study shared by the cells)."""
    _, study_spec = load_folder(study)
    points = cells(study_spec)
    out = {}
    for name, tuned in best.items():
        keys = set(tuned["params"])
        mine = [p for p in points if not tuned["cell"] or p.values == tuned["cell"]]
        out[name] = {problem(p.config, keys) for p in mine}
    return out


def with_params(spec: SweepSpec, study: Path, allow_unlike: bool = False) -> SweepSpec:
    """The sweep with each run's tuned recipe. allow_unlike: hand a recipe to runs whose grammar
    or model differ from every cell it was tuned on, with a warning, instead of refusing."""
    best = read_best(study)
    if not best:
        raise UserError(f"study {study} has no completed trial yet: nothing to take params from")
    blocks = spec.grid if isinstance(spec.grid, list) else [spec.grid]
    varied = {k for b in blocks for k in b if k != "zip"} | {
        k for b in blocks for g in _zips(b) for k in g
    }
    base = config_flat(RunConfig()) | flatten(base_tree(spec))  # not validated: runs are
    problems = study_problems(study, best)
    grid, unlike = [], set()
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
                unlike |= unlike_runs(spec, grid[-1], problems[name], set(tuned["params"]), name)
    if unlike and not allow_unlike:
        raise UserError(
            f"study {study} was tuned on other problems than some runs of sweep {spec.name}: "
            + "; ".join(sorted(unlike))
            + ". Tune those cells, or take the recipe anyway with --params-unlike"
        )
    for text in sorted(unlike):
        warnings.warn(f"--params-unlike: {text}", UnlikeRecipe, stacklevel=2)
    tuned_spec = spec.model_copy(update={"grid": grid})
    keys = {k for tuned in best.values() for k in tuned["params"]}

    def runs(s: SweepSpec) -> list[tuple]:
        """Each run, its tuned keys and its W&B naming (tracking: the grid's keys) left out."""
        points = expand_points(s).points if s.grid else []
        return sorted(
            tuple(
                sorted(
                    (k, repr(v))
                    for k, v in config_flat(p.config).items()
                    if k not in keys and not k.startswith("tracking.")
                )
            )
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


class UnlikeRecipe(UserWarning):
    """A recipe handed to runs of another problem than it was tuned on (allow_unlike)."""


def unlike_runs(
    spec: SweepSpec, block: dict[str, Any], problems: set[tuple], tuned: set[str], name: str
) -> set[str]:
    """The block's runs whose problem none of the study's cells had, said in one line each."""
    part = spec.model_copy(update={"grid": block})
    found = {problem(p.config, tuned) for p in expand_points(part).points} - problems
    on = " | ".join(sorted(describe(p) for p in problems))
    return {f"{describe(p)} takes the recipe of study {name}, tuned on {on}" for p in found}


def _zips(block: dict[str, Any]) -> list[dict[str, Any]]:
    value = block.get("zip", [])
    return value if isinstance(value, list) else [value]
