"""How runs and cells are named for people: a W&B run's name and its `cell` config key, the
cells of `sweep status` and of the fit's tables, and the columns of the CLI's tables."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rhmscale.config import GRAMMAR_KEYS, GRAMMAR_NAMES, RunConfig

LABEL_NAMES = (*GRAMMAR_NAMES, "P", "seed")  # what a run's label always names


def short_names(keys: list[str], taken: Iterable[str] = ()) -> list[str]:
    """grammar.v -> v, unless two keys would get the same name (seed, grammar.seed) or the name
    is `taken` (by what a label names anyway): then the full key."""
    last = [key.split(".")[-1] for key in keys]
    taken = set(taken)
    return [
        name if last.count(name) == 1 and name not in taken else key
        for key, name in zip(keys, last, strict=True)
    ]


def cell_parts(varying: list[str]) -> dict[str, str]:
    """A cell label's names -> their keys, in order: v m s L, then the other keys shown."""
    return GRAMMAR_KEYS | dict(zip(short_names(varying, LABEL_NAMES), varying, strict=True))


def cell_words(values: Mapping[str, Any], varying: list[str]) -> str:
    """'v=16 m=4 s=2 L=3', then the `varying` keys ('width=64') from a key -> value mapping."""
    return " ".join(f"{name}={values.get(key)}" for name, key in cell_parts(varying).items())


def cell_label(config: RunConfig) -> str:
    """The run's cell: 'v=8 m=3 s=2 L=3', then tracking.name_keys as 'width=64' (the full key
    where its last part would be ambiguous)."""
    return cell_words(config.flat(), list(config.tracking.name_keys))


def run_label(config: RunConfig) -> str:
    """The run (its W&B name): 'v=8 m=3 s=2 L=3 P=187 seed=0', a tuning trial's number first
    ('trial 12 v=8 ...')."""
    trial = config.tracking.trial.get("number")
    prefix = f"trial {trial} " if trial is not None else ""
    return f"{prefix}{cell_label(config)} P={config.data.P} seed={config.seed}"
