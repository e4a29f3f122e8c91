"""Which runs may be trained together in one pack: the keys members may differ in.

Kept free of torch so that sweep planning can group runs cheaply. Everything not listed in
MEMBER_KEYS must be equal within a pack: the stacked parameters need one shape, the step loop
one schedule (steps, warmup, learning rate, evaluation steps) and one device and precision.
A key added to the config later is shared by default, which is the safe side.
"""

from __future__ import annotations

from collections.abc import Sequence

from rhmscale.config import RunConfig, member_keys, pack_settings
from rhmscale.errors import UserError


def check_packable(configs: Sequence[RunConfig]) -> None:
    """Raise UserError naming the first setting that differs between members, or a duplicate."""
    if not configs:
        raise UserError("a pack needs at least one run")
    first = pack_settings(configs[0])
    seen: dict[str, int] = {}
    for i, config in enumerate(configs):
        run_id = config.run_id()
        if run_id in seen:
            raise UserError(f"run {run_id} appears twice in one pack (members {seen[run_id]}, {i})")
        seen[run_id] = i
        for key, value in pack_settings(config).items():
            if value != first[key]:
                raise UserError(
                    f"runs of one pack must share '{key}': run {configs[0].run_id()} has "
                    f"{first[key]!r}, run {run_id} has {value!r}; pack only runs of one shape "
                    f"(members may differ in {', '.join(member_keys())})"
                )
