"""Which runs may be trained together in one pack: the keys members may differ in.

Kept free of torch so that sweep planning can group runs cheaply. Everything not listed in
MEMBER_KEYS must be equal within a pack: the stacked parameters need one shape, the step loop
one schedule (steps, warmup, learning rate, evaluation steps) and one device and precision.
A key added to the config later is shared by default, which is the safe side.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rhmscale.config import RunConfig
from rhmscale.errors import UserError

# Per-member: own data set, grammar rules, seeds, clipping threshold and W&B settings.
MEMBER_KEYS = frozenset({"seed", "grammar.m", "grammar.seed", "data.P", "train.grad_clip"})
MEMBER_SECTIONS = ("tracking.",)


def shared_settings(config: RunConfig) -> dict[str, Any]:
    """The settings every member of a pack must share (dotted keys)."""
    return {
        key: value
        for key, value in config.flat().items()
        if key not in MEMBER_KEYS and not key.startswith(MEMBER_SECTIONS)
    }


def pack_key(config: RunConfig) -> str:
    """Runs with equal keys can share a pack (a canonical JSON string, usable as a dict key)."""
    return json.dumps(shared_settings(config), sort_keys=True, separators=(",", ":"))


def check_packable(configs: Sequence[RunConfig]) -> None:
    """Raise UserError naming the first setting that differs between members, or a duplicate."""
    if not configs:
        raise UserError("a pack needs at least one run")
    first = shared_settings(configs[0])
    seen: dict[str, int] = {}
    for i, config in enumerate(configs):
        run_id = config.run_id()
        if run_id in seen:
            raise UserError(f"run {run_id} appears twice in one pack (members {seen[run_id]}, {i})")
        seen[run_id] = i
        for key, value in shared_settings(config).items():
            if value != first[key]:
                raise UserError(
                    f"runs of one pack must share '{key}': run {configs[0].run_id()} has "
                    f"{first[key]!r}, run {run_id} has {value!r}; pack only runs of one shape "
                    f"(members may differ in {', '.join(sorted(MEMBER_KEYS))} and tracking.*)"
                )
