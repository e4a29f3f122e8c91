"""W&B runs -> the same table as collect(): from offline run folders or from the W&B API.

Both sources go through one conversion, `frame_from_wandb_run(run_id, config, history)`, so a
sweep collected from its run directories, from the offline W&B folders inside them, or from
the W&B server gives the same rows and columns.

Offline runs are read straight from their `run-<id>.wandb` transaction logs (wandb_log.py);
a run resumed into several offline folders becomes one run here.

Runs that never evaluated, or stopped before their last step, are skipped as "unfinished";
logs that cannot be read as "corrupt". Neither stops the collection.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from rhmscale.config import flatten
from rhmscale.errors import UserError
from rhmscale.results.collect import Collection
from rhmscale.results.wandb_log import OfflineLog, find_offline_logs, read_offline_log

# Metrics first in this order (as metrics.parquet has them), then the rest in natural order.
LEADING_METRICS = ["step", "samples_seen", "epoch", "wall_s", "train/loss", "val/loss"]
INT_METRICS = {"step", "samples_seen"}
# Keys W&B or Lightning add to every history row; W&B's own keys start with "_".
STEP_KEYS = ("step", "trainer/global_step", "_step")  # our step, first found wins
DROPPED_KEYS = {"trainer/global_step", "global_step"}
DROPPED_CONFIG = {"run_id", "cell"}  # run_id: a column of its own; cell: the fit labels cells


class SkipRun(Exception):
    """A run that cannot give rows; `reason` is the key in Collection.skipped."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail or reason)
        self.reason = reason


# --------------------------------------------------------------------------------------------
# The one conversion shared by the offline and the API paths


def frame_from_wandb_run(
    run_id: str,
    config: Mapping[str, Any],
    history_rows: Iterable[Mapping[str, Any]],
    summary: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """One W&B run as collect() rows: run_id, metrics per eval step, flattened config, final.

    config: W&B's run config, flat ("grammar.v") or nested, values bare or wrapped in
    {"value": ...} as the API stores them. history_rows: W&B history rows in logged order;
    `step` is our logged step (Lightning's `trainer/global_step`); only rows with `gen/`
    metrics are evaluations (see rows_by_step); W&B's own keys (`_step`, `_runtime`, ...)
    and media (tables) are dropped; rows of the same step merge, later values winning.
    summary: when given, a `final/step` in it marks the run finished.
    Raises SkipRun("unfinished") for a run without `gen/` evaluations or that stopped before
    `train.max_steps`.
    """
    flat = flat_config(config)
    by_step = rows_by_step(history_rows)
    evals = [row for _, row in sorted(by_step.items())]
    if not evals:
        raise SkipRun("unfinished", f"run {run_id} has no gen/ evaluations")
    last = evals[-1]["step"]
    max_steps = flat.get("train.max_steps")
    finished = summary is not None and "final/step" in summary
    if not finished and isinstance(max_steps, int | float) and last < max_steps:
        raise SkipRun("unfinished", f"run {run_id} stopped at step {last} of {max_steps}")
    frame = pd.DataFrame(evals)
    frame = frame[metric_order(frame.columns)]
    for column in frame.columns:
        ints = column in INT_METRICS and frame[column].notna().all()
        frame[column] = frame[column].astype("int64" if ints else "float64")
    frame = frame.assign(**flat)
    frame.insert(0, "run_id", run_id)
    frame["final"] = frame["step"] == frame["step"].max()
    return frame


def flat_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """W&B config -> collect()'s config columns (dotted keys, lists joined by ",")."""
    bare = {k: unwrap(v) for k, v in config.items() if not str(k).startswith("_")}
    flat = flatten({k: v for k, v in bare.items() if k not in DROPPED_CONFIG})
    return {k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in flat.items()}


def unwrap(value: Any) -> Any:
    """The API's {"value": v, "desc": ...} -> v (nested dicts unwrapped all the way down)."""
    if isinstance(value, dict):
        if "value" in value and set(value) <= {"value", "desc"}:
            return unwrap(value["value"])
        return {k: unwrap(v) for k, v in value.items()}
    return value


def rows_by_step(history_rows: Iterable[Mapping[str, Any]]) -> dict[int, dict[str, Any]]:
    """Evaluation metrics of each logged step, rows of the same step merged key by key.

    Only rows with `gen/` metrics are evaluations: the per-step `train/loss_step` rows, the
    sample-table rows and, in runs logged before rhmscale stopped using Lightning's
    `self.log`, rows with a per-step `train/loss` and Lightning's own `epoch` counter share
    steps (and names) with them and would overwrite them.
    """
    merged: dict[int, dict[str, Any]] = {}
    for raw in history_rows:
        step = next((raw[k] for k in STEP_KEYS if is_number(raw.get(k))), None)
        metrics = {k: number(v) for k, v in raw.items() if is_metric(k, v)}
        metrics.pop("step", None)
        if step is None or not any(k.startswith("gen/") for k in metrics):
            continue
        merged.setdefault(int(step), {"step": int(step)}).update(metrics)
    return merged


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_metric(key: str, value: Any) -> bool:
    if key.startswith("_") or key in DROPPED_KEYS:
        return False
    return is_number(value) or value in ("NaN", "Infinity", "-Infinity")


def number(value: Any) -> float | int:
    return float(value) if isinstance(value, str) else value


def metric_order(columns: Iterable[str]) -> list[str]:
    columns = list(columns)
    lead = [c for c in LEADING_METRICS if c in columns]
    return lead + sorted((c for c in columns if c not in lead), key=natural_key)


def natural_key(name: str) -> tuple:
    """gen/acc_l1, gen/tuple_acc_l1, gen/acc_l2, ..., then the other gen/ metrics."""
    head, _, level = name.rpartition("_l")
    if level.isdigit():
        return (0, int(level), head)
    return (1, 0, name)


def collect_runs(runs: Iterable[tuple[str, Any]]) -> Collection:
    """(run_id, thunk returning (config, history, summary)) pairs -> one Collection."""
    frames, skipped = [], {}
    for run_id, load in runs:
        try:
            config, history, summary = load()
            frames.append(frame_from_wandb_run(run_id, config, history, summary))
        except SkipRun as skip:
            skipped.setdefault(skip.reason, []).append(run_id)
        except UserError:
            raise
        except Exception:  # noqa: BLE001 - an unreadable run is reported, not fatal
            skipped.setdefault("corrupt", []).append(run_id)
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return Collection(frame, skipped)


# --------------------------------------------------------------------------------------------
# Offline runs: the .wandb logs of run folders (wandb_log.py reads them)


def merge_logs(logs: list[OfflineLog]) -> tuple[dict, list[dict], dict]:
    """A run resumed into several logs -> one (config, history, summary), oldest first;
    for a step logged in more than one, the later log's row wins."""
    logs = sorted(logs, key=lambda log: (log.start_time, log.path.parent.name))
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    steps: dict[int, dict[str, Any]] = {}
    for log in logs:
        config.update(log.config)
        summary.update(log.summary)
        steps.update(rows_by_step(log.history))
    return config, [steps[s] for s in sorted(steps)], summary


def collect_wandb_offline(path: Path) -> Collection:
    """Offline W&B runs under path (a sweep, a run directory, a wandb/ folder) as collect()."""
    by_run: dict[str, list[Path]] = {}
    for log_path in find_offline_logs(path):
        by_run.setdefault(log_path.stem.removeprefix("run-"), []).append(log_path)

    def loader(paths: list[Path]):
        def load():
            try:
                logs = [read_offline_log(p) for p in paths]
            except Exception as exc:  # noqa: BLE001
                raise SkipRun("corrupt", str(exc)) from exc
            return merge_logs(logs)

        return load

    return collect_runs((run_id, loader(paths)) for run_id, paths in sorted(by_run.items()))


# --------------------------------------------------------------------------------------------
# Online runs: the W&B API


def collect_wandb_api(
    entity_project: str, *, group: str | None = None, api: Any = None
) -> Collection:
    """Runs of a W&B project ("entity/project"), optionally one group (a sweep), as collect().

    api: a wandb.Api() (or anything with the same runs()); made here when not given.
    """
    if entity_project.count("/") != 1 or not all(entity_project.split("/")):
        raise UserError(f"expected entity/project, got {entity_project!r}")
    if api is None:
        api = make_api()
    filters = {"group": group} if group else {}
    try:
        runs = list(api.runs(entity_project, filters=filters))
    except Exception as exc:  # noqa: BLE001 - wandb raises ValueError/CommError/HTTP errors
        raise api_error(entity_project, exc) from exc
    if not runs:
        where = f"group {group!r} of {entity_project}" if group else entity_project
        raise UserError(f"no W&B runs in {where}")

    def loader(run: Any):
        def load():
            summary = getattr(run, "summary_metrics", None)
            if not isinstance(summary, Mapping):
                summary = getattr(run, "summary", None) or {}
                summary = getattr(summary, "_json_dict", summary)
            return dict(run.config), run.scan_history(), dict(summary)

        return load

    return collect_runs((run.id, loader(run)) for run in runs)


def make_api() -> Any:
    try:
        import wandb

        return wandb.Api()
    except Exception as exc:  # noqa: BLE001 - UsageError / AuthenticationError / CommError
        raise UserError(
            f"cannot reach W&B ({exc}): run `wandb login` or set WANDB_API_KEY "
            "(and WANDB_BASE_URL for a private server)"
        ) from exc


def api_error(entity_project: str, exc: Exception) -> UserError:
    text = str(exc)
    lowered = text.lower()
    if any(word in lowered for word in ("401", "403", "unauthorized", "api key", "permission")):
        return UserError(
            f"W&B refused access to {entity_project} ({text}): run `wandb login` or set "
            "WANDB_API_KEY to a key of an account that can see the project"
        )
    if "not find project" in lowered or "not found" in lowered or "404" in lowered:
        return UserError(
            f"W&B project {entity_project} not found: check the entity/project spelling "
            "(`rhmscale config show` names tracking.entity and tracking.project) and that "
            "you are logged in as an account that can see it (`wandb login`)"
        )
    return UserError(f"cannot list the runs of {entity_project} on W&B: {text}")
