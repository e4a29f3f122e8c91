"""How runs and cells are named for people: a W&B run's name and its `cell` config key."""

from __future__ import annotations

from rhmscale.config import GRAMMAR_NAMES, RunConfig

LABEL_NAMES = (*GRAMMAR_NAMES, "P", "seed")  # what a run's label always names


def cell_label(config: RunConfig) -> str:
    """The run's cell: 'v=8 m=3 s=2 L=3', then tracking.name_keys as 'width=64' (the full key
    where its last part would be ambiguous)."""
    flat = config.flat()
    parts = [f"{name}={flat[f'grammar.{name}']}" for name in GRAMMAR_NAMES]
    keys = config.tracking.name_keys
    last_parts = [key.split(".")[-1] for key in keys]
    for key, last in zip(keys, last_parts, strict=True):
        short = last if last_parts.count(last) == 1 and last not in LABEL_NAMES else key
        parts.append(f"{short}={flat.get(key)}")
    return " ".join(parts)


def run_label(config: RunConfig) -> str:
    """The run (its W&B name): 'v=8 m=3 s=2 L=3 P=187 seed=0', a tuning trial's number first
    ('trial 12 v=8 ...')."""
    trial = config.tracking.trial.get("number")
    prefix = f"trial {trial} " if trial is not None else ""
    return f"{prefix}{cell_label(config)} P={config.data.P} seed={config.seed}"
