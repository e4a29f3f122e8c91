"""A pack of runs end to end: the job function of a packed sweep task.

execute_pack(configs, run_dirs) does for K runs of one shape what run.execute does for one,
training them together (pipeline.packed). From outside each run directory is a lone run's:
config.json, grammar.json, metrics.parquet, checkpoints/last.ckpt (its own slice), run.log, its
own W&B run, result.json last, failed.json when it failed. Runs already done are skipped; the
others resume from their own checkpoints, in sub-packs of the runs at one step.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rhmscale.config import RunConfig
from rhmscale.errors import UserError
from rhmscale.rhm.data import make_datasets
from rhmscale.store import wandb_mirror
from rhmscale.store.atomic import atomic_write_json, atomic_write_text, read_json
from rhmscale.store.folders import RunDir
from rhmscale.training.pack_checkpoint import read_member_checkpoint
from rhmscale.training.packed import Member, PackTrainer
from rhmscale.training.packing import check_packable
from rhmscale.training.run import (
    RunOutcome,
    check_same_run,
    result_record,
    write_config,
    write_failed,
)


def execute(
    configs: Sequence[RunConfig],
    run_dirs: Sequence[Path],
    *,
    progress: bool = False,
    stop_at_step: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[RunOutcome]:
    """Run (or resume, or skip if done) runs of one shape together; one outcome per run.

    Raises UserError before writing anything when the runs do not share a shape or a directory
    holds another run. A run that fails on its own (data, evaluation, files) gets failed.json
    and outcome "failed" while the others go on; when the shared training raises, every run it
    was training fails so. should_stop is asked after every step: true checkpoints every member
    and returns "interrupted" for all that are not done. KeyboardInterrupt and SystemExit are
    raised after closing the W&B runs, as run.execute does. compile: torch.compile the
    training step (see train.compile_mode).
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
    todo = []
    for i, store in enumerate(stores):
        if store.state() == "done":
            outcomes[i] = RunOutcome("done", store.path, read_json(store.result))
        else:
            todo.append(i)
    pack = _Pack([configs[i] for i in todo], [stores[i] for i in todo])
    with pack.logs():
        done = pack.run(progress, stop_at_step, should_stop, configs[0].train.compile)
    outcomes.update(zip(todo, done, strict=True))
    return [outcomes[i] for i in range(len(configs))]


class _Pack:
    """The runs still to train: their set-up, sub-packs by resume step, and their records."""

    def __init__(self, configs: list[RunConfig], stores: list[RunDir]) -> None:
        self.configs, self.stores = configs, stores
        self.started = time.perf_counter()
        self.log = [logging.getLogger(f"rhmscale.run.{c.run_id()}") for c in configs]
        self.members: dict[int, Member] = {}
        self.outcomes: dict[int, RunOutcome] = {}

    @contextlib.contextmanager
    def logs(self) -> Iterator[None]:
        """Each run's logger writes to its own run.log while the pack runs."""
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

    def run(self, progress, stop_at_step, should_stop, compile) -> list[RunOutcome]:
        for i in range(len(self.configs)):
            self.set_up(i)
        by_step: dict[int, list[int]] = {}
        for i, member in self.members.items():
            by_step.setdefault(member.state["step"] if member.state else 0, []).append(i)
        for step in sorted(by_step, reverse=True):  # the furthest along first
            group = by_step[step]
            if should_stop is not None and should_stop():
                self.interrupted(group)
            else:
                self.train(group, progress, stop_at_step, should_stop, compile)
        return [self.outcomes[i] for i in range(len(self.configs))]

    def set_up(self, i: int) -> None:
        """Run i's directory, data, checkpoint and W&B run; if one raises, run i fails alone."""
        config, store, logger = self.configs[i], self.stores[i], None
        try:
            store.failed.unlink(missing_ok=True)  # a retry starts clean
            write_config(store, config)
            self.log[i].info(
                "run %s on %s in %s, in a pack of %d",
                config.run_id(),
                socket.gethostname(),
                store.path,
                len(self.configs),
            )
            data = make_datasets(config)
            atomic_write_text(store.grammar, data.grammar.to_json())
            last = store.last_checkpoint
            state = read_member_checkpoint(last) if last.exists() else None
            with wandb_mirror.wandb_folders(store):
                logger = wandb_mirror.make_logger(config, store, concurrent=True)
                if logger is not None:
                    logger.experiment  # noqa: B018 - start the W&B run inside its folders
            self.members[i] = Member(
                config,
                data,
                store,
                logger=logger,
                samples_table=wandb_mirror.samples_table_writer(logger),
                state=state,
            )
        except Exception as exc:  # noqa: BLE001 - that run fails, the others go on
            self.fail(i, exc, logger)

    def train(self, group: list[int], progress, stop_at_step, should_stop, compile) -> None:
        try:
            trainer = PackTrainer(
                [self.members[i] for i in group],
                compile=compile,
                on_member_error=lambda k, exc: self.fail(group[k], exc),
            )
            ids = ", ".join(self.configs[i].run_id() for i in group)
            for i in group:
                self.log[i].info(
                    "pack of %d from step %d on %s (%s): %s",
                    len(group),
                    trainer.step,
                    trainer.device,
                    trainer.precision,
                    ids,
                )
            completed = trainer.fit(
                stop_at_step=stop_at_step, should_stop=should_stop, progress=progress
            )
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
            if completed:
                self.record_done(i, trainer)
            else:
                self.interrupted([i])

    def training(self, group: list[int]) -> list[int]:
        """The runs of a group that have not failed."""
        return [i for i in group if i not in self.outcomes]

    def record_done(self, i: int, trainer: PackTrainer) -> None:
        config, store = self.configs[i], self.stores[i]
        try:
            result = result_record(
                config,
                self.members[i].history,
                trainer.device.type,
                trainer.precision,
                self.started,
            )
            summary = {f"final/{k}": v for k, v in result["final"].items()}
            self.finish_wandb(i, summary=summary)
            atomic_write_json(store.result, result)  # last: its presence means done
        except Exception as exc:  # noqa: BLE001 - that run fails, the others go on
            self.fail(i, exc)
            return
        self.log[i].info("run %s done", config.run_id())
        self.outcomes[i] = RunOutcome("done", store.path, result)

    def interrupted(self, group: list[int]) -> None:
        for i in group:
            self.finish_wandb(i)
            self.log[i].info(
                "run %s stopped at a checkpoint; resubmit to resume", self.configs[i].run_id()
            )
            self.outcomes[i] = RunOutcome("interrupted", self.stores[i].path, None)

    def fail(self, i: int, exc: BaseException, logger: Any = None) -> None:
        self.log[i].error("run %s failed", self.configs[i].run_id(), exc_info=exc)
        write_failed(self.stores[i], self.configs[i], exc)
        self.outcomes[i] = RunOutcome("failed", self.stores[i].path, None, repr(exc)[:500])
        # W&B may already be gone (after a SIGTERM): that must not hide the error.
        with contextlib.suppress(Exception):
            if i in self.members:
                self.finish_wandb(i, exit_code=1)
            else:
                wandb_mirror.finish(logger, None, exit_code=1)

    def finish_wandb(self, i: int, summary: dict[str, Any] | None = None, exit_code=0) -> None:
        with wandb_mirror.wandb_folders(self.stores[i]):
            wandb_mirror.finish(self.members[i].logger, summary, exit_code=exit_code)
