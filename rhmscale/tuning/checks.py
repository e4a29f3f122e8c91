"""A study checked whole before it is submitted: every cell with every point of the search space
that can be checked cheaply is a valid run config (the worker's own trial_config), and its
evaluations record the objective. So a trial does not fail after submission for its config or
its metric (one that does anyway fails alone, with its reason: worker.py).
"""

from __future__ import annotations

import difflib
import functools
import itertools
import re
from typing import Any

from rhmscale.config import RunConfig
from rhmscale.config_io import check_keys, set_dotted
from rhmscale.errors import UserError
from rhmscale.sweeps.grid import Point
from rhmscale.tuning.spec import StudySpec
from rhmscale.tuning.study import study_cells, trial_config

# An evaluation row's keys besides generation_metrics' (training/evaluation.py EvalRecorder.
# record; tests/test_tune.py checks them against a run's metrics.parquet).
ROW_KEYS = ("step", "samples_seen", "epoch", "wall_s", "train/loss", "val/loss")
CORNER_COMBOS = 256  # combinations of every key's ends, at most
SWEEP_CHECKS = 1024  # per key: its values (Distribution.values_to_check) x the others' ends


@functools.cache
def recorded_metrics(levels: int) -> frozenset[str]:
    """The metrics an evaluation row of a run on a grammar of depth `levels` holds: the row's
    own and generation_metrics' (read off one sample of a tiny grammar of that depth)."""
    import numpy as np

    from rhmscale.rhm.grammar import Grammar
    from rhmscale.rhm.metrics import TrainingSetIndex, generation_metrics

    grammar = Grammar.random(v=2, m=1, s=2, L=levels, seed=0)
    sample = grammar.sample(1, np.random.default_rng(0))
    return frozenset(ROW_KEYS) | set(
        generation_metrics(grammar, sample, TrainingSetIndex(grammar, sample))
    )


def describe(metrics: frozenset[str], levels: int) -> str:
    """The metrics, per-level ones once with {k}: 'gen/acc_l{k}, ... (k = 1..L), val/loss'."""
    names = sorted({re.sub(r"_l\d+$", "_l{k}", m) for m in metrics})
    return f"{', '.join(names)} ({{k}} a level from 1 to {levels})"


def check_objective(spec: StudySpec, config: RunConfig, where: str) -> None:
    levels = config.grammar.L
    goal = spec.objective.samples_to_learn
    if goal is not None:
        if goal["level"] > levels:
            raise UserError(
                f"{where}: objective samples_to_learn.level {int(goal['level'])} is deeper than "
                f"the grammar (grammar.L = {levels}): choose a level from 1 to {levels}"
            )
        return
    metric, recorded = spec.objective.metric, recorded_metrics(levels)
    if metric in recorded:
        return
    close = difflib.get_close_matches(str(metric), recorded, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise UserError(
        f"{where}: objective metric {metric!r} is not recorded by the runs{hint}; "
        f"on a grammar with L = {levels} they record {describe(recorded, levels)}"
    )


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
    combination that is not a valid run or whose runs would not record the objective; the
    cells."""
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
            config = trial_config(spec, cell, params, {}, where)
            depth = config.grammar.L
            searched = f": search point grammar.L={depth}" if "grammar.L" in spec.search else ""
            check_objective(spec, config, f"study {cell.study_name}{searched}")
    return [cell.point for cell in study_of]
