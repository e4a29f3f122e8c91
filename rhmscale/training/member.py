"""A run in a slot of a pack (Member), and where empty slots get their runs (Feed)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from rhmscale.config import RunConfig
from rhmscale.rhm.data import Datasets
from rhmscale.store.folders import RunDir
from rhmscale.store.wandb_mirror import MirrorRun
from rhmscale.training.schedule import Verdict


@dataclass(eq=False)
class Member:
    """One run in a slot."""

    config: RunConfig
    data: Datasets
    run_dir: RunDir
    mirror: MirrorRun | None = None  # its W&B run
    state: dict[str, Any] | None = None  # its checkpoint, to resume from
    history: list[dict[str, Any]] = field(default_factory=list)
    error: BaseException | None = None  # its own evaluation or checkpoint failed
    stopped: bool = False  # early: converged before max_steps, pruned or settled
    # Asked with each new evaluation row (a tuning trial's judge): a Verdict stops the run there.
    judge: Callable[[dict[str, Any]], Verdict | None] | None = None
    verdict: Verdict | None = None


class Feed(Protocol):
    """Where empty slots get their runs: next() a run set up for the pack's shape, or None
    when none is ready now; exhausted() once none will come."""

    def next(self) -> Member | None: ...

    def exhausted(self) -> bool: ...
