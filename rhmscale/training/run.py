"""One run end to end: the job function that every executor calls.

execute(config, run_dir) writes config.json, trains (resuming from the last checkpoint if there
is one), evaluates, and writes result.json last. A run that raises leaves failed.json with the
traceback and a readable run.log.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import platform
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rhmscale import __version__
from rhmscale.config import RunConfig
from rhmscale.config_io import validate_config
from rhmscale.errors import UserError
from rhmscale.store.atomic import atomic_write_json, atomic_write_text, read_json
from rhmscale.store.folders import RunDir

log = logging.getLogger("rhmscale.run")


@dataclass
class RunOutcome:
    state: str  # "done" or "interrupted"; packs also return "failed" (failed.json written)
    run_dir: Path
    result: dict[str, Any] | None  # result.json's content when done
    error: str | None = None  # "failed": the exception, as repr


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def check_same_run(run_dir: RunDir, config: RunConfig) -> None:
    """Refuse to mix two different configs in one run directory."""
    if not run_dir.config.exists():
        return
    stored = validate_config(read_json(run_dir.config)["config"], str(run_dir.config))
    if stored.run_id() != config.run_id():
        raise UserError(
            f"{run_dir.path} holds run {stored.run_id()}, not {config.run_id()}: "
            "choose another directory or delete it"
        )


@contextlib.contextmanager
def run_log(path: Path) -> Iterator[None]:
    """Send rhmscale's and Lightning's log records to the run's log file while it runs."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger("rhmscale"), logging.getLogger("lightning.pytorch")]
    for logger in loggers:
        logger.addHandler(handler)
    logging.getLogger("rhmscale").setLevel(logging.INFO)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        handler.close()


def execute(
    config: RunConfig,
    run_dir: Path,
    *,
    progress: bool = False,
    stop_at_step: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    compile: bool | str = False,
) -> RunOutcome:
    """Run (or resume, or skip if done) one configuration in run_dir.

    should_stop: asked after every training step; when it returns true (e.g. a preemption
    signal arrived) the run checkpoints and returns state "interrupted".
    stop_at_step: checkpoint and stop after that step, as a preemption would (for tests).
    compile: torch.compile the training step's forward and loss (see train.compile_mode).
    """
    store = RunDir(Path(run_dir))
    store.path.mkdir(parents=True, exist_ok=True)
    check_same_run(store, config)
    if store.state() == "done":
        return RunOutcome("done", store.path, read_json(store.result))
    store.failed.unlink(missing_ok=True)  # a retry starts clean
    write_config(store, config)
    with run_log(store.log):
        log.info("run %s on %s in %s", config.run_id(), socket.gethostname(), store.path)
        try:
            return _train_and_record(config, store, progress, stop_at_step, should_stop, compile)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                log.warning("run %s interrupted: %r", config.run_id(), exc)
                raise
            log.exception("run %s failed", config.run_id())
            write_failed(store, config, exc)
            raise


def write_config(store: RunDir, config: RunConfig) -> None:
    atomic_write_json(
        store.config,
        {
            "run_id": config.run_id(),
            "config": config.model_dump(mode="json"),
            "version": __version__,
        },
    )


def write_failed(store: RunDir, config: RunConfig, exc: BaseException) -> None:
    atomic_write_json(
        store.failed,
        {
            "run_id": config.run_id(),
            "error": type(exc).__name__,
            "message": str(exc),
            "traceback": "".join(traceback.format_exception(exc)),
            "host": socket.gethostname(),
            "time": now(),
        },
    )


def result_record(
    config: RunConfig, history: list[dict[str, Any]], device: str, precision: str, started: float
) -> dict[str, Any]:
    """result.json's content for a finished run (its last evaluation is the final one)."""
    return {
        "run_id": config.run_id(),
        "config": config.model_dump(mode="json"),
        "final": history[-1],
        "n_evals": len(history),
        "device": device,
        "precision": precision,
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "version": __version__,
        "session_wall_s": time.perf_counter() - started,
        "finished_at": now(),
    }


def _train_and_record(
    config: RunConfig,
    store: RunDir,
    progress: bool,
    stop_at_step: int | None,
    should_stop: Callable[[], bool] | None,
    compile: bool | str,
) -> RunOutcome:
    # Heavy imports here, so that importing this module (and the CLI) stays cheap.
    from rhmscale.rhm.data import make_datasets
    from rhmscale.store import wandb_mirror
    from rhmscale.training.train import train

    started = time.perf_counter()
    data = make_datasets(config)
    atomic_write_text(store.grammar, data.grammar.to_json())
    with wandb_mirror.wandb_folders(store):
        logger = wandb_mirror.make_logger(config, store)
        try:
            outcome = train(
                config,
                data,
                store,
                logger=logger,
                samples_table=wandb_mirror.samples_table_writer(logger),
                progress=progress,
                stop_at_step=stop_at_step,
                should_stop=should_stop,
                compile=compile,
            )
        except BaseException:
            # Closing W&B can itself fail (its service may already be gone after a SIGTERM);
            # that must not hide the original error.
            try:
                wandb_mirror.finish(logger, None, exit_code=1)
            except Exception:
                log.warning("could not close the W&B run", exc_info=True)
            raise
        if not outcome.completed:
            wandb_mirror.finish(logger, None)
            log.info("run %s stopped at a checkpoint; resubmit to resume", config.run_id())
            return RunOutcome("interrupted", store.path, None)
        result = result_record(config, outcome.history, outcome.device, outcome.precision, started)
        wandb_mirror.finish(logger, {f"final/{k}": v for k, v in result["final"].items()})
    atomic_write_json(store.result, result)  # last: its presence means done
    log.info("run %s done", config.run_id())
    return RunOutcome("done", store.path, result)
