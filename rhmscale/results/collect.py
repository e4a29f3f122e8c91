"""Run directories -> one tidy pandas DataFrame: one row per run and evaluation point.

Config is flattened into columns (`grammar.v`, `data.P`, `seed`, ...) beside the metrics.
Runs that are unfinished, failed or unreadable are counted and named, never crash the
collection: a sweep being collected while it still runs is the normal case.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from rhmscale.config import GRAMMAR_NAMES, RunConfig, config_flat, flatten, size_key
from rhmscale.errors import UserError
from rhmscale.store.atomic import atomic_write
from rhmscale.store.folders import RunDir, iter_run_dirs
from rhmscale.store.reading import read_object, read_parquet


@dataclass
class Collection:
    frame: pd.DataFrame
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> run ids
    damage: dict[str, str] = field(default_factory=dict)  # corrupt run id -> what is damaged

    def counts(self) -> dict[str, int]:
        """Runs by state: collected ones are done, skipped ones by why."""
        counts = {"done": int(self.frame["run_id"].nunique()) if len(self.frame) else 0}
        counts.update({reason: len(ids) for reason, ids in self.skipped.items()})
        return counts

    def write(self, output: Path) -> None:
        """The table as .csv or .parquet (by the suffix), written atomically."""
        frame = self.frame
        if output.suffix == ".csv":
            atomic_write(output, lambda handle: handle.write(frame.to_csv(index=False).encode()))
        elif output.suffix == ".parquet":
            atomic_write(output, lambda handle: frame.to_parquet(handle, index=False))
        else:
            raise UserError(f"--output {output}: use a .parquet or .csv file name")

    def summary(self) -> str:
        runs = self.frame["run_id"].nunique() if len(self.frame) else 0
        parts = [f"{runs} runs, {len(self.frame)} evaluation rows"]
        parts += [f"{len(ids)} {reason}" for reason, ids in sorted(self.skipped.items())]
        return ", ".join(parts)


TABLE_SUFFIXES = (".csv", ".parquet")


def read_table(path: Path) -> pd.DataFrame:
    """A table that `rhmscale collect -o` wrote (a colleague's runs without their folders)."""
    try:
        frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - any reader error: say which file
        raise UserError(f"{path}: not a readable table ({exc})") from exc
    required = ["run_id", "step", "final", size_key(), *(f"grammar.{n}" for n in GRAMMAR_NAMES)]
    if missing := [column for column in required if column not in frame.columns]:
        raise UserError(
            f"{path}: not a table of `rhmscale collect -o` (no column {', '.join(missing)}); "
            "collect it again"
        )
    check_columns(frame, path)
    return frame


def check_columns(frame: pd.DataFrame, path: Path) -> None:
    """A table edited by hand: the first value that is not of its column's kind (text in an
    accuracy or in grammar.v; a number in model.time_cond), named by line and column. The
    columns checked are then of their kind (a CSV column with text in it was read as text)."""
    defaults = config_flat(RunConfig())
    for column in frame.columns:
        default, values = defaults.get(column), frame[column]
        if isinstance(default, bool):
            read = values.map(BOOLEANS.get, na_action="ignore")
            kind = "true or false"
        elif isinstance(default, int | float) or (column not in defaults and is_metric(column)):
            read = pd.to_numeric(values, errors="coerce")
            kind = "a number"
        else:
            continue
        wrong = read.isna() & values.notna()
        if wrong.any():
            row = int(wrong.to_numpy().argmax())
            where = f"line {row + 2}" if path.suffix == ".csv" else f"row {row + 1}"
            raise UserError(
                f"{path} {where}: column '{column}' holds {values.iloc[row]!r}, not {kind}; "
                "correct it, or collect the table again (rhmscale collect -o)"
            )
        frame[column] = read


# A boolean column as pandas reads it back from CSV: booleans, or text where a row is not one.
BOOLEANS = {True: True, False: False, "True": True, "False": False, "true": True, "false": False}


def is_metric(column: str) -> bool:
    """What the runs recorded (step, samples_seen, val/loss, gen/acc_l1, ...): numbers."""
    return "/" in column or column in ("step", "samples_seen", "wall_s")


def run_dirs(path: Path) -> list[RunDir]:
    """The run folders of a sweep folder (<sweep>/runs/*) or of a folder of runs."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path} is not a folder")
    found = list(iter_run_dirs(path))
    if not found:
        sweeps = sorted(child.name for child in path.iterdir() if (child / "runs").is_dir())
        if sweeps:  # a root of sweeps, given where one sweep was meant
            raise UserError(
                f"no runs in {path}: it is a root of sweeps ({', '.join(sweeps)}); give one, "
                f"e.g. {path / sweeps[0]}"
            )
        raise UserError(f"no runs in {path} (expected <sweep>/runs/<run_id>/config.json)")
    return found


def read_run(store: RunDir) -> pd.DataFrame:
    """Evaluation rows of one finished run (its files judged whole by RunDir.damage) with its
    flattened config as columns."""
    meta = read_object(store.config)
    history = read_parquet(store.metrics)
    for key, value in flatten(meta["config"]).items():
        history[key] = value if not isinstance(value, list) else ",".join(map(str, value))
    history.insert(0, "run_id", meta["run_id"])
    history["final"] = history["step"] == history["step"].max()
    return history


def collect(paths: Path | Sequence[Path]) -> Collection:
    """The finished runs of one or several sweep folders (or folders of runs) as one table.

    Several folders are fitted together (a sweep extended by a second one): their cells merge
    by config, and a run found in two folders (same run id) counts once, done wherever it is
    done. A path may also be a .csv or .parquet table that `collect -o` wrote: its runs join as
    they are (they were done when it was written)."""
    paths = [Path(p) for p in ([paths] if isinstance(paths, str | Path) else paths)]
    is_table = {p: p.is_file() and p.suffix in TABLE_SUFFIXES for p in paths}
    frames, done, skipped, damage = [], set(), {}, {}
    for table in (read_table(p) for p in paths if is_table[p]):
        table = table[~table["run_id"].isin(done)]
        frames.append(table)
        done.update(table["run_id"])
    for store in (store for path in paths if not is_table[path] for store in run_dirs(path)):
        run_id = store.path.name
        if run_id in done:
            continue
        state = store.state()
        if state != "done":
            skipped.setdefault(state, []).append(run_id)
            if state == "corrupt":
                damage[run_id] = store.damage() or "damaged"
            continue
        try:
            frame = read_run(store)
        except Exception as exc:  # noqa: BLE001 - a corrupt run is reported, not fatal
            skipped.setdefault("corrupt", []).append(run_id)
            damage[run_id] = str(exc)  # changed since state() judged it whole
            continue
        if frame["run_id"].iloc[0] not in done:  # the same run under another folder name
            frames.append(frame)
        done.update({run_id, frame["run_id"].iloc[0]})
    skipped = {
        reason: sorted(set(ids) - done) for reason, ids in skipped.items() if set(ids) - done
    }
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return Collection(frame, skipped, {r: damage[r] for r in skipped.get("corrupt", [])})
