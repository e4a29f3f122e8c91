"""Study specs: what `rhmscale tune submit` reads, validated whole before anything is submitted.

A study spec has the sweep spec's `name`, `base`, `grid` (the cells: one study per cell, or one
shared study, `per_cell`), `executor` and `tracking`, plus::

    search:                       # config key -> distribution
      train.lr: {float: [1.0e-4, 3.0e-3], log: true}
      train.warmup_steps: {int: [0, 1000], step: 100}
      model.arch: {choices: [transformer, tree_unet]}
    objective: {metric: gen/novel_acc_l3, direction: maximize, at: best}
      # or: {samples_to_learn: {level: 3, threshold: 0.5}}   (minimised)
    budget: {trials: 40, time_min: 120}   # per study; time from the study's creation; failed
      # trials count; max_failures_in_a_row: 5 stops a study whose trials keep failing
    sampler: {kind: tpe, seed: 0}         # tpe | random
    pruner: {kind: median, warmup_evals: 2}   # median | hyperband | none
    workers: 4                            # array tasks asking the studies for trials
    enqueue: [{train.lr: 1.0e-3}]         # trials every study runs first (a known recipe)

checks.check_search validates what the spec cannot alone (the configs, the objective's metric).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from rhmscale.config import MAX_SEED
from rhmscale.config_io import load_yaml, validated
from rhmscale.errors import UserError
from rhmscale.kinds import Typed
from rhmscale.sweeps.grid import Point, expand_points
from rhmscale.sweeps.spec import SweepSpec

FORBIDDEN = ("seed", "grammar.seed", "tracking.")  # a trial is a recipe, not a draw
# An int range's bounds: Optuna's samplers draw integers through floats, exact to 2**53.
MAX_INT = 2**53
EVERY_INT = 256  # an integer range with at most this many values is checked at every one
SPREAD = 32  # ... a wider one at this many, spread over it


class Distribution(Typed):
    """One of: {float: [lo, hi]}, {int: [lo, hi]} (with log, step) or {choices: [...]}."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    float_: tuple[float, float] | None = Field(None, alias="float")
    int_: tuple[int, int] | None = Field(None, alias="int")
    choices: list[Any] | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_kind(self) -> Distribution:
        kinds = [k for k in ("float_", "int_", "choices") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of float: [lo, hi], int: [lo, hi], choices: [...]")
        bounds = self.float_ or self.int_
        if bounds is not None and not bounds[0] < bounds[1]:
            raise ValueError(f"bounds {list(bounds)}: the lower must be below the upper")
        if bounds is not None and self.log and bounds[0] <= 0:
            raise ValueError("log: true needs a lower bound above 0")
        if self.log and self.step is not None:
            raise ValueError("log and step exclude each other (Optuna samples one or the other)")
        if self.int_ is not None and max(map(abs, self.int_)) > MAX_INT:
            raise ValueError(f"int bounds {list(self.int_)}: each within ±2**53 = ±{MAX_INT:,}")
        if self.int_ is not None and self.step is not None and self.step != int(self.step):
            raise ValueError(f"an int range's step {self.step:g} must be a whole number")
        if self.choices is not None and (not self.choices or self.log or self.step):
            raise ValueError("choices: a non-empty list, without log or step")
        return self

    def corners(self) -> list[Any]:
        """Values that bound what the sampler may draw."""
        if self.choices is not None:
            return list(self.choices)
        return list(self.float_ or self.int_)  # type: ignore[arg-type]

    def values_to_check(self) -> list[Any]:
        """What the sampler may draw, as far as checking it up front is cheap: every choice;
        every integer of a range of at most EVERY_INT of them (else SPREAD spread over it);
        a float range's ends (what a real value can break is a bound, not a divisibility)."""
        if self.int_ is None:
            return self.corners()
        low, high = self.int_
        step = int(self.step or 1)
        values = range(low, high + 1, step)
        if len(values) <= EVERY_INT:
            return list(values)
        # Integer arithmetic: a float index rounds past the end of a range of 10**18 values.
        picks = {values[i * (len(values) - 1) // (SPREAD - 1)] for i in range(SPREAD)}
        return sorted(picks | {low, high})

    def holds(self, value: Any) -> str | None:
        """Why the sampler could not draw `value` (an enqueued trial's), None when it could."""
        if self.choices is not None:
            return None if value in self.choices else f"is not one of its choices {self.choices}"
        low, high = self.float_ or self.int_  # type: ignore[misc]
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if self.int_ is not None and not is_int:
            return "is not an integer"
        if not is_int and not isinstance(value, float):
            return "is not a number"
        if not low <= value <= high:
            return f"is outside its range [{low}, {high}]"
        if self.step and abs((value - low) / self.step - round((value - low) / self.step)) > 1e-9:
            return f"is not on its grid ({low} + a multiple of step {self.step:g})"
        return None

    def suggest(self, trial: Any, name: str) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(name, self.choices)
        if self.int_ is not None:
            step = int(self.step or 1)
            return trial.suggest_int(name, *self.int_, step=step, log=self.log)
        return trial.suggest_float(name, *self.float_, step=self.step, log=self.log)  # type: ignore[misc]


class Objective(Typed):
    model_config = ConfigDict(extra="forbid")

    metric: str | None = None
    direction: Literal["maximize", "minimize"] | None = None
    at: Literal["best", "final"] = "best"
    samples_to_learn: dict[str, float] | None = None  # {level: k, threshold: t}

    @model_validator(mode="after")
    def _one_kind(self) -> Objective:
        if (self.metric is None) == (self.samples_to_learn is None):
            raise ValueError(
                "give either metric (with direction) or samples_to_learn: {level, threshold}"
            )
        if self.metric is not None and self.direction is None:
            raise ValueError(f"metric {self.metric}: say direction: maximize or minimize")
        if self.samples_to_learn is not None:
            keys = set(self.samples_to_learn)
            threshold = self.samples_to_learn.get("threshold", 0.5)
            if not keys <= {"level", "threshold"} or "level" not in keys or not 0 < threshold < 1:
                raise ValueError("samples_to_learn takes {level: k, threshold: t}, 0 < t < 1")
            # the default written in: every reader takes goal["threshold"]
            level = self.samples_to_learn["level"]
            if level != int(level) or level < 1:
                raise ValueError(f"samples_to_learn.level {level}: a grammar level, 1, 2, ...")
            self.samples_to_learn = {"level": level, "threshold": threshold}
        return self

    @property
    def study_direction(self) -> str:
        return self.direction or "minimize"  # samples to learn: fewer is better


class Budget(Typed):
    model_config = ConfigDict(extra="forbid")

    trials: int = Field(20, ge=1, le=100_000)  # every trial asked counts, failed ones too
    time_min: float | None = Field(None, gt=0)
    # The study stops (with its reason, in tune status) when this many trials in a row failed.
    max_failures_in_a_row: int = Field(5, ge=1)


class SamplerSpec(Typed):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["tpe", "random"] = "tpe"
    # Optuna seeds numpy's RandomState with it (0 to 2**32 - 1), when the study is created:
    # bounded here, so that a bad seed is refused before study.yaml or the journal is written.
    seed: int = Field(0, ge=0, le=MAX_SEED)


class PrunerSpec(Typed):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["median", "hyperband", "none"] = "median"
    warmup_evals: int = Field(2, ge=0, description="median: evaluations before pruning")
    startup_trials: int = Field(4, ge=0, description="median: trials before pruning")


class StudySpec(SweepSpec):
    """A sweep spec's fields (grid = cells) and the study's."""

    search: dict[str, Distribution]
    objective: Objective
    budget: Budget = Field(default_factory=Budget)
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    per_cell: bool = True
    workers: int = Field(2, ge=1, le=10_000)
    # Trials to run first in every study, e.g. the recipe in use: {key: value} of searched keys.
    enqueue: list[dict[str, Any]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _samples_budget(self) -> StudySpec:
        if self.objective.samples_to_learn is not None and "train.max_steps" in self.search:
            raise ValueError(
                "samples_to_learn gives every trial the same samples (train.max_steps x the "
                "largest batch size searched): search train.batch_size, not train.max_steps"
            )
        return self

    @model_validator(mode="after")
    def _enqueued_params(self) -> StudySpec:
        for i, params in enumerate(self.enqueue):
            unknown = sorted(set(params) - set(self.search))
            if unknown:
                raise ValueError(f"enqueue[{i}]: {', '.join(unknown)} is not a searched key")
            for key, value in params.items():
                if (why := self.search[key].holds(value)) is not None:
                    raise ValueError(
                        f"enqueue[{i}]: {key}={value} {why}: change the value or widen search"
                    )
        return self

    @field_validator("search")
    @classmethod
    def _search_keys(cls, value: dict[str, Distribution]) -> dict[str, Distribution]:
        if not value:
            raise ValueError("search is empty: give at least one key, e.g. train.lr")
        for key in value:
            if key.startswith(FORBIDDEN[2]) or key in FORBIDDEN[:2]:
                raise ValueError(f"'{key}' cannot be searched: a trial is a recipe, not a seed")
        return value


def parse_study_spec(tree: dict[str, Any], where: str = "study spec") -> StudySpec:
    if isinstance(tree, dict) and "grid" not in tree:
        tree = {**tree, "grid": {}}
    return validated(StudySpec, tree, f"{where}: ")


def load_study_spec(path: str | Path) -> StudySpec:
    if not Path(path).is_file():
        raise UserError(f"no study spec {path}: give the path of a YAML file")
    return parse_study_spec(load_yaml(Path(path)), str(path))


def cells(spec: StudySpec) -> list[Point]:
    """The grid's points: each a cell (with no grid, one cell: the base)."""
    if spec.grid:
        return expand_points(spec).points
    (point,) = expand_points(
        spec.model_copy(update={"grid": {"seed": [spec.base.get("seed", 0)]}})
    ).points
    return [Point(point.config, {}, point.run_id)]  # the base alone: a cell with no grid values
