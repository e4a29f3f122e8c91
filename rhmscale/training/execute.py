"""execute(configs, run_dirs): the job function every executor calls, for one run or a pack.

Each run keeps its own directory, as if it had trained alone: config.json, grammar.json,
metrics.parquet, checkpoints/last.ckpt (its own slice), run.log, its own W&B run, result.json
written last (its presence means done), failed.json when it failed. Runs already done are
skipped; the others resume from their own checkpoints, in sub-packs of the runs at one step.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import platform
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rhmscale import __version__
from rhmscale.config import RunConfig, member_keys, pack_settings
from rhmscale.config_io import validate_config
from rhmscale.errors import UserError
from rhmscale.store import wandb_mirror
from rhmscale.store.atomic import atomic_write_json, atomic_write_text, read_json
from rhmscale.store.folders import RunDir, read_field
from rhmscale.store.lock import try_lock
from rhmscale.training import stop
from rhmscale.training.schedule import VERDICTS, Verdict


@dataclass
class RunOutcome:
    state: str  # "done", "interrupted", or "failed" (failed.json written)
    run_dir: Path
    result: dict[str, Any] | None  # result.json's content when done
    error: str | None = None  # "failed": "Type: message"; "running": where


def execute(
    configs: Sequence[RunConfig],
    run_dirs: Sequence[Path],
    *,
    progress: bool = False,
    stop_at_step: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[int, Any], None] | None = None,
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
    on_step(step, losses (K,)) is called after every optimiser step of a (sub-)pack (tests).
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
    todo, held = [], []
    try:
        for i, store in enumerate(stores):
            if store.state() == "done":
                outcomes[i] = RunOutcome("done", store.path, read_json(store.result))
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
            todo.append(i)
        if todo:
            judges = [judge[i] if judge else None for i in todo]
            runs = _Runs([configs[i] for i in todo], [stores[i] for i in todo], judges)
            with runs.logs(), stop.honour_stop_signals():
                done = runs.run(progress, stop_at_step, stop.combined(should_stop), on_step)
            outcomes.update(zip(todo, done, strict=True))
    finally:
        for lock in held:
            lock.release()
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
    stored = validate_config(read_json(store.config)["config"], str(store.config))
    if stored.run_id() != config.run_id():
        raise UserError(
            f"{store.path} holds run {stored.run_id()}, not {config.run_id()}: "
            "choose another directory or delete it"
        )


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class _Runs:
    """The runs still to train: their set-up, sub-packs by resume step, and their records."""

    def __init__(self, configs: list[RunConfig], stores: list[RunDir], judges: list) -> None:
        self.configs, self.stores, self.judges = configs, stores, judges
        self.started = time.perf_counter()
        self.log = [logging.getLogger(f"rhmscale.run.{c.run_id()}") for c in configs]
        self.members: dict[int, Any] = {}  # i -> trainer.Member
        self.outcomes: dict[int, RunOutcome] = {}

    @contextlib.contextmanager
    def logs(self) -> Iterator[None]:
        """Each run's logger writes to its own run.log while the runs train."""
        handlers = []
        for store, logger in zip(self.stores, self.log, strict=True):
            store.path.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(store.log)
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
            )
            logger.setLevel(logging.INFO)
            logger.addHandler(handler)
            handlers.append(handler)
        try:
            yield
        finally:
            for logger, handler in zip(self.log, handlers, strict=True):
                logger.removeHandler(handler)
                handler.close()

    def run(self, progress, stop_at_step, should_stop, on_step) -> list[RunOutcome]:
        # Heavy imports here, so that importing rhmscale.training (and the CLI) stays cheap.
        from rhmscale.training.fabric import make_fabric

        fabric = make_fabric(self.configs[0])  # the device and precision the runs share
        for i in range(len(self.configs)):
            self.set_up(i, fabric)
        by_step: dict[int, list[int]] = {}
        for i, member in self.members.items():
            by_step.setdefault(member.state["step"] if member.state else 0, []).append(i)
        for step in sorted(by_step, reverse=True):  # the furthest along first
            group = by_step[step]
            if should_stop is not None and should_stop():
                self.interrupted(group)
            else:
                self.train(group, fabric, progress, stop_at_step, should_stop, on_step)
        return [self.outcomes[i] for i in range(len(self.configs))]

    def set_up(self, i: int, fabric: Any) -> None:
        """Run i's directory, data, checkpoint and W&B run; if one raises, run i fails alone."""
        from rhmscale.rhm.data import make_datasets
        from rhmscale.training import checkpoint
        from rhmscale.training.fabric import device_note
        from rhmscale.training.trainer import Member

        config, store, mirror = self.configs[i], self.stores[i], None
        try:
            store.failed.unlink(missing_ok=True)  # a retry starts clean
            for stale in store.clean_temporaries():
                self.log[i].info("removed %s, left by an interrupted write", stale.name)
            if store.result.exists():  # not done (execute skips those): its result is damaged
                self.log[i].warning("%s; training the run from its checkpoint", store.damage())
                store.result.unlink()
            write_config(store, config)
            self.log[i].info(
                "run %s on %s in %s (%d run(s) train together)",
                config.run_id(),
                socket.gethostname(),
                store.path,
                len(self.configs),
            )
            self.log[i].info(device_note(fabric.device))
            data = make_datasets(config)
            atomic_write_text(store.grammar, data.grammar.to_json())
            state = checkpoint.load_newest(fabric, store, config.run_id(), self.log[i])
            if state is not None and state["history"]:
                store.write_metrics(state["history"])  # whatever happened to metrics.parquet
            mirror = wandb_mirror.open_run(config, store)
            self.members[i] = Member(
                config, data, store, mirror=mirror, state=state, judge=self.judges[i]
            )
        except Exception as exc:  # noqa: BLE001 - that run fails, the others go on
            self.fail(i, exc, mirror)

    def train(self, group, fabric, progress, stop_at_step, should_stop, on_step) -> None:
        """Train a group of runs at one step to the end; when half of them have stopped early,
        the others go on in a smaller pack (re-stacked from their in-memory state)."""
        from rhmscale.training.trainer import Trainer

        try:
            while True:
                trainer = Trainer(
                    [self.members[i] for i in group],
                    fabric,
                    on_step=on_step,
                    on_member_error=lambda k, exc, g=group: self.fail(g[k], exc),
                    on_member_done=lambda k, g=group: self.record_done(g[k], fabric),
                    on_note=lambda message, g=group: self.note(g, message),
                )
                self.log_start(group, trainer.step, fabric)
                ended = trainer.fit(
                    stop_at_step=stop_at_step, should_stop=should_stop, progress=progress
                )
                if ended != "restack":
                    break
                states = trainer.member_states()
                group = [group[k] for k in states]
                for k, i in zip(states, group, strict=True):
                    self.members[i].state = states[k]
                del trainer  # its GPU memory and graph, before the smaller pack's
        except (KeyboardInterrupt, SystemExit) as exc:
            for i in self.training(group):
                self.log[i].warning("run %s interrupted: %r", self.configs[i].run_id(), exc)
                self.finish_wandb(i, exit_code=1)
            raise
        except Exception as exc:  # noqa: BLE001 - recorded in every member's failed.json
            for i in self.training(group):
                self.fail(i, exc)
            return
        for i in self.training(group):
            if ended == "completed":
                self.record_done(i, fabric)
            else:
                self.interrupted([i])

    def note(self, group: list[int], message: str) -> None:
        """A line about the pack in the run.log of each of its runs still training."""
        for i in self.training(group):
            self.log[i].info(message)

    def log_start(self, group: list[int], step: int, fabric: Any) -> None:
        ids = ", ".join(self.configs[i].run_id() for i in group)
        for i in group:
            self.log[i].info(
                "training %d run(s) from step %d on %s (%s, compile %s): %s",
                len(group),
                step,
                fabric.device,
                precision_of(fabric),
                self.configs[i].train.compile,
                ids,
            )

    def training(self, group: list[int]) -> list[int]:
        """The runs of a group that have not failed."""
        return [i for i in group if i not in self.outcomes]

    def record_done(self, i: int, fabric: Any) -> None:
        config, store = self.configs[i], self.stores[i]
        try:
            member = self.members[i]
            result = result_record(
                config, member.history, fabric.device.type, precision_of(fabric), self.started
            )
            result |= {verdict: member.verdict == verdict for verdict in VERDICTS}
            self.finish_wandb(i, summary={f"final/{k}": v for k, v in result["final"].items()})
            atomic_write_json(store.result, result)  # last: its presence means done
        except Exception as exc:  # noqa: BLE001 - that run fails, the others go on
            self.fail(i, exc)
            return
        how = member.verdict or "stopped early"
        early = f", {how} at step {result['final']['step']}" * result["stopped_early"]
        self.log[i].info("run %s done%s", config.run_id(), early)
        self.outcomes[i] = RunOutcome("done", store.path, result)

    def interrupted(self, group: list[int]) -> None:
        for i in group:
            self.finish_wandb(i)
            self.log[i].info(
                "run %s stopped at a checkpoint; resubmit to resume", self.configs[i].run_id()
            )
            self.outcomes[i] = RunOutcome("interrupted", self.stores[i].path, None)

    def fail(self, i: int, exc: BaseException, mirror: Any = None) -> None:
        self.log[i].error("run %s failed", self.configs[i].run_id(), exc_info=exc)
        record = getattr(exc, "record", {})  # e.g. reason "diverged" and the step
        try:
            self.stores[i].write_failed(self.configs[i].run_id(), exc, **record)
        except OSError as write_error:  # a full disk: the log and the outcome still say it
            self.log[i].error("could not write failed.json: %s", write_error)
        self.outcomes[i] = RunOutcome(
            "failed", self.stores[i].path, None, f"{type(exc).__name__}: {exc}"[:500]
        )
        if i in self.members:
            self.finish_wandb(i, exit_code=1)
        elif mirror is not None:
            with contextlib.suppress(Exception):
                mirror.finish(exit_code=1)

    def finish_wandb(self, i: int, summary: dict[str, Any] | None = None, exit_code=0) -> None:
        """Close the run's W&B run. W&B may be gone already (after a SIGTERM): one line in the
        log then, never an error that hides the run's own outcome."""
        mirror = self.members[i].mirror
        if mirror is None:
            return
        try:
            mirror.finish(summary, exit_code=exit_code)
        except Exception as exc:  # noqa: BLE001 - see above
            self.log[i].warning("could not close the W&B run: %r", exc)


def precision_of(fabric: Any) -> str:
    """Fabric's precision setting: "bf16-mixed" or "32-true"."""
    return fabric.strategy.precision.precision


def write_config(store: RunDir, config: RunConfig) -> None:
    atomic_write_json(
        store.config,
        {
            "run_id": config.run_id(),
            "config": config.model_dump(mode="json"),
            "version": __version__,
        },
    )


def result_record(
    config: RunConfig, history: list[dict[str, Any]], device: str, precision: str, started: float
) -> dict[str, Any]:
    """result.json's content for a finished run (its last evaluation is the final one; `best`
    the step of its lowest val/loss, what `fit --at best` takes)."""
    scored = [row for row in history if math.isfinite(row["val/loss"])]
    return {
        "run_id": config.run_id(),
        "config": config.model_dump(mode="json"),
        "final": history[-1],
        "n_evals": len(history),
        "stopped_early": history[-1]["step"] < config.train.max_steps,
        "best_step": min(scored, key=lambda row: row["val/loss"])["step"] if scored else None,
        "device": device,
        "precision": precision,
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "version": __version__,
        "session_wall_s": time.perf_counter() - started,
        "finished_at": now(),
    }
