"""W&B mirror of a run: the run store is the source of truth, W&B is the dashboard.

W&B run id = run_id, so a requeued run resumes the same W&B run; group = sweep name; the config
is flattened so W&B's grouping and parallel-coordinates views work. W&B's own folders are kept
inside the run directory. Every member of a pack has its own W&B run, open at the same time in
one process (wandb's reinit="create_new"), which is why this talks to wandb directly rather than
through a logger that logs the same metrics everywhere.

Metrics are logged with our training step as the column `step` (W&B's x axis for them), not as
W&B's internal step: a resumed run logs some steps again, which W&B's step would drop.
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
    """Point W&B's cache/data/artifact folders into the run directory while W&B is called."""
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


class MirrorRun:
    """One run's open W&B run; each call runs inside the run folder's W&B folders."""

    def __init__(self, run: Any, run_dir: RunDir) -> None:
        self.run = run
        self.run_dir = run_dir

    def log(self, metrics: dict[str, Any], step: int) -> None:
        with wandb_folders(self.run_dir):
            self.run.log({**metrics, "step": step})

    def log_samples(self, step: int, rows: list[list[Any]]) -> None:
        """Generated samples as a W&B table (rows: sample, depth, grammatical, memorized)."""
        import wandb

        table = wandb.Table(columns=SAMPLE_COLUMNS, data=[[step, *row] for row in rows])
        with wandb_folders(self.run_dir):
            self.run.log({"gen/samples": table, "step": step})

    def finish(self, summary: dict[str, Any] | None = None, exit_code: int = 0) -> None:
        with wandb_folders(self.run_dir):
            if summary:
                self.run.summary.update(summary)
            self.run.finish(exit_code=exit_code)


def open_run(config: RunConfig, run_dir: RunDir) -> MirrorRun | None:
    """Start (or resume) the run's W&B run; None when tracking is disabled."""
    mode = resolve_mode(config.tracking.wandb)
    if mode == "disabled":
        return None
    import wandb

    tracking = config.tracking
    with wandb_folders(run_dir):
        run = wandb.init(
            id=config.run_id(),
            name=config.run_id(),
            project=tracking.project,
            entity=tracking.entity,
            group=tracking.group,
            tags=tracking.tags or None,
            dir=str(run_dir.path),
            mode=mode,
            resume="allow",
            config=config.flat() | {"run_id": config.run_id()},
            settings=wandb.Settings(silent=True, console="off") if mode == "offline" else None,
            reinit="create_new",  # the members of a pack each have a run, open at once
        )
        run.define_metric("step")
        run.define_metric("*", step_metric="step")
    return MirrorRun(run, run_dir)
