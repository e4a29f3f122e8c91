"""A study checked whole before it is submitted: every cell with every point of the search space
that can be checked cheaply is a valid run config (the worker's own trial_config). So a trial
does not fail after submission for its config (one that does anyway fails alone, with its
reason: worker.py).
"""

from __future__ import annotations

import itertools
from typing import Any

from rhmscale.config_io import check_keys, set_dotted
from rhmscale.errors import UserError
from rhmscale.sweeps.grid import Point
from rhmscale.tuning.spec import StudySpec
from rhmscale.tuning.study import study_cells, trial_config

CORNER_COMBOS = 256  # combinations of every key's ends, at most
SWEEP_CHECKS = 1024  # per key: its values (Distribution.values_to_check) x the others' ends


def search_points(spec: StudySpec) -> list[dict[str, Any]]:
    """The parameter combinations to check: every combination of the keys' ends; each key at
    every value it is checked at, with the others at (some of) their ends; every enqueued
    recipe with its free keys at their ends. A config constraint that couples keys (width
    divisible by heads) meets each key's values with the others' ends."""
    keys = list(spec.search)
    ends = [spec.search[key].corners() for key in keys]
    combos: dict[str, dict[str, Any]] = {}

    def add(values: tuple[Any, ...]) -> None:
        combos.setdefault(repr(values), dict(zip(keys, values, strict=True)))

    for values in itertools.islice(itertools.product(*ends), CORNER_COMBOS):
        add(values)
    for i, key in enumerate(keys):
        every = spec.search[key].values_to_check()
        others = itertools.product(*(e if j != i else [None] for j, e in enumerate(ends)))
        for other in itertools.islice(others, max(1, SWEEP_CHECKS // len(every))):
            for value in every:
                add((*other[:i], value, *other[i + 1 :]))
    for params in spec.enqueue:
        choices = [[params[key]] if key in params else e for key, e in zip(keys, ends, strict=True)]
        free = itertools.product(*choices)
        for values in itertools.islice(free, CORNER_COMBOS):
            add(values)
    return list(combos.values())


def check_search(spec: StudySpec) -> list[Point]:
    """Raise a UserError naming the cell, the search point and what to change for the first
    combination that is not a valid run; the cells."""
    study_of = study_cells(spec)
    grid_keys = {key for cell in study_of for key in cell.point.values}
    clash = sorted(set(spec.search) & grid_keys)
    if clash:
        raise UserError(f"study {spec.name}: {', '.join(clash)} is both searched and in the grid")
    searched: dict[str, Any] = {}
    for key, dist in spec.search.items():
        set_dotted(searched, key, dist.corners()[0])
    check_keys(searched, f"study {spec.name}: search")  # names the nearest valid key
    points = search_points(spec)
    for cell in study_of:
        for params in points:
            where = f"study {cell.study_name}: search point " + ", ".join(
                f"{k}={v}" for k, v in params.items()
            )
            trial_config(spec, cell, params, {}, where)
    return [cell.point for cell in study_of]
