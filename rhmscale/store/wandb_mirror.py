"""W&B mirror of a run: the run store is the source of truth, W&B is the dashboard.

W&B run id = run_id, so a requeued run resumes the same W&B run; group = sweep name; the config
is flattened so W&B's grouping and parallel-coordinates views work. W&B's own folders are kept
inside the run directory.
"""

from __future__ import annotations

import contextlib
import netrc
import os
from collections.abc import Iterator
from typing import Any

from rhmscale.config import RunConfig
from rhmscale.store.folders import RunDir

SAMPLE_COLUMNS = ["step", "sample", "coherence_depth", "grammatical", "memorized"]


def has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(mode: str) -> str:
    """auto: online when credentials exist, else offline (sync later with `wandb sync`)."""
    if mode == "auto":
        return "online" if has_credentials() else "offline"
    return mode


@contextlib.contextmanager
def wandb_folders(run_dir: RunDir) -> Iterator[None]:
    """Point W&B's cache/data/artifact folders into the run directory for the run's duration."""
    names = {
        "WANDB_DIR": run_dir.path,
        "WANDB_CACHE_DIR": run_dir.wandb / "cache",
        "WANDB_DATA_DIR": run_dir.wandb / "data",
        "WANDB_ARTIFACT_DIR": run_dir.wandb / "artifacts",
    }
    saved = {name: os.environ.get(name) for name in names}
    run_dir.wandb.mkdir(parents=True, exist_ok=True)
    os.environ.update({name: str(path) for name, path in names.items()})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def make_logger(config: RunConfig, run_dir: RunDir, concurrent: bool = False) -> Any:
    """A Lightning WandbLogger for this run, or None when tracking is disabled.

    concurrent: one of several W&B runs open in this process at once (the members of a pack).
    Without it a second WandbLogger would attach to the first run (wandb.run).
    """
    mode = resolve_mode(config.tracking.wandb)
    if mode == "disabled":
        return None
    from lightning.pytorch.loggers import WandbLogger

    tracking = config.tracking
    return WandbLogger(
        id=config.run_id(),
        name=config.run_id(),
        project=tracking.project,
        entity=tracking.entity,
        group=tracking.group,
        tags=tracking.tags or None,
        save_dir=str(run_dir.path),
        mode=mode,
        resume="allow",
        config=config.flat() | {"run_id": config.run_id()},
        settings={"silent": True, "console": "off"} if mode == "offline" else None,
        **({"reinit": "create_new"} if concurrent else {}),
    )


def samples_table_writer(logger: Any):
    """A callable(step, rows) that logs generated samples as a W&B table, or None."""
    if logger is None:
        return None

    def write(step: int, rows: list[list[Any]]) -> None:
        import wandb

        table = wandb.Table(columns=SAMPLE_COLUMNS, data=[[step, *row] for row in rows])
        logger.experiment.log({"gen/samples": table}, step=step)

    return write


def finish(logger: Any, summary: dict[str, Any] | None, exit_code: int = 0) -> None:
    if logger is None:
        return
    run = logger.experiment
    if summary:
        run.summary.update(summary)
    run.finish(exit_code=exit_code)
