"""execute(configs, run_dirs): the job function every executor calls, for one run or a pack.

Runs already done are skipped; the others resume from their own checkpoints, each at its own
step, in one pack of slots (training.runs.Runs, training.trainer.Trainer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rhmscale.config import RunConfig, member_keys, pack_settings
from rhmscale.config_io import validate_config
from rhmscale.errors import UserError
from rhmscale.store.folders import RunDir, read_field
from rhmscale.store.lock import try_lock
from rhmscale.store.reading import read_object
from rhmscale.training import stop
from rhmscale.training.runs import RunOutcome, Runs
from rhmscale.training.schedule import Verdict

__all__ = ["RunOutcome", "execute", "check_packable", "check_same_run"]


def execute(
    configs: Sequence[RunConfig],
    run_dirs: Sequence[Path],
    *,
    progress: bool = False,
    stop_at_step: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[Any, Any], None] | None = None,
    judge: Sequence[Callable[[dict[str, Any]], Verdict | None] | None] | None = None,
) -> list[RunOutcome]:
    """Run (or resume, or skip if done) one run, or runs of one shape together.

    Raises UserError before writing anything when the runs do not share a shape or a directory
    holds another run. A run that fails on its own (data, evaluation, files) gets failed.json
    and outcome "failed" while the others go on; when the shared training raises, every run it
    was training fails so. should_stop is asked after every step: true checkpoints every run and
    returns "interrupted" for all that are not done (stop_at_step: the same at a step, for
    tests); so do SIGTERM and SIGINT (training.stop). KeyboardInterrupt and SystemExit are
    raised after closing the W&B runs. One writer per run folder: a run another process is
    training (its folder's lock is held) is left to it, outcome "running"; for a lone run that
    is a UserError saying where it runs.
    on_step(trainer, losses (K,)) is called after every optimiser step (tests).
    judge[i], when given, is asked with each new evaluation row of run i (a tuning trial's):
    "pruned" stops the run there, recorded done with "pruned": true in result.json; "settled"
    (its objective can no longer change) stops it with "settled": true; None trains on.
    """
    check_packable(configs)
    stores = [RunDir(Path(path)) for path in run_dirs]
    if len(stores) != len(configs):
        raise UserError(f"{len(configs)} configs but {len(stores)} run directories")
    if len({store.path.resolve() for store in stores}) != len(stores):
        raise UserError("two runs of one pack share a run directory")
    for store, config in zip(stores, configs, strict=True):
        check_same_run(store, config)
    outcomes: dict[int, RunOutcome] = {}
    runs, held = Runs(), []
    try:
        for i, store in enumerate(stores):
            if store.state() == "done":
                outcomes[i] = RunOutcome("done", store.path, read_object(store.result))
                continue
            lock = try_lock(store.lock_file)
            if isinstance(lock, str):
                if len(configs) == 1:
                    raise UserError(
                        f"run {configs[i].run_id()} is already running ({lock}) in "
                        f"{store.path}; wait for it, or stop it and run again to resume"
                    )
                outcomes[i] = RunOutcome("running", store.path, None, lock)
                continue
            held.append(lock)
            runs.add(configs[i], store, judge[i] if judge else None, lock)
        if runs.todo:
            with stop.honour_stop_signals():
                runs.train(progress, stop_at_step, stop.combined(should_stop), on_step)
    finally:
        runs.close_logs()
        for lock in held:
            lock.release()
    for i, config in enumerate(configs):
        outcomes.setdefault(i, runs.outcomes.get(config.run_id()))
    return [outcomes[i] for i in range(len(configs))]


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


def check_same_run(store: RunDir, config: RunConfig) -> None:
    """Refuse to mix two different configs in one run directory. An unreadable config.json, or
    one edited under this run's id, is damage, not another run: it is written anew (set_up)."""
    if read_field(store.config, "config") is None or (
        read_field(store.config, "run_id") == config.run_id()
    ):
        return
    stored = validate_config(read_object(store.config)["config"], str(store.config))
    if stored.run_id() != config.run_id():
        raise UserError(
            f"{store.path} holds run {stored.run_id()}, not {config.run_id()}: "
            "choose another directory or delete it"
        )
