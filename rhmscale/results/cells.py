"""Which evaluations the fit uses and how they group: one row per run, runs grouped in cells.

A cell is one grammar and training setup: the config keys whose role is "science" (config.py
declares every key's role). Runs of one cell differ only in the dataset size P, the fit's x
axis (the key whose role is "size"), and in their seeds, which make them replicates.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rhmscale import config
from rhmscale.errors import UserError
from rhmscale.labels import cell_parts

SIZE = config.size_key()
# Cells in numeric order of L, v, m, s (labels would sort v=16 before v=8).
CELL_ORDER = [config.GRAMMAR_KEYS[n] for n in ("L", "v", "m", "s")] + ["cell"]


def cell_labels(frame: pd.DataFrame, keys: list[str]) -> pd.Series:
    """'v=16 m=4 s=2 L=3' plus any other key that differs between cells."""
    varying = [k for k in keys if k not in config.GRAMMAR_KEYS.values() and frame[k].nunique() > 1]
    parts = [f"{name}=" + frame[col].astype(str) for name, col in cell_parts(varying).items()]
    label = parts[0]
    for part in parts[1:]:
        label = label + " " + part
    return label


def with_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of the collected table with a "cell" column: the label of each row's cell."""
    frame = frame.copy()
    frame["cell"] = cell_labels(frame, config.cell_columns(list(frame.columns)))
    return frame


def by_cell(rows: pd.DataFrame):
    """Rows grouped by cell, the cells in CELL_ORDER."""
    return rows.sort_values(CELL_ORDER).groupby("cell", sort=False)


def grammar_of(group: pd.DataFrame) -> dict[str, int]:
    """v, m, s, L of a cell's rows."""
    return {short: int(group[col].iloc[0]) for short, col in config.GRAMMAR_KEYS.items()}


def variables(points: pd.DataFrame) -> dict[str, np.ndarray]:
    """The theory's variables v, m, s, L, k of each row of a table with a level column "k"."""
    out = {n: points[col].to_numpy(dtype=float) for n, col in config.GRAMMAR_KEYS.items()}
    out["k"] = points["k"].to_numpy(dtype=float)
    return out


def rows_at(frame: pd.DataFrame, at: str) -> pd.DataFrame:
    """One evaluation row per run: the best, the final, or the last at or before a step."""
    if at == "final":
        return frame[frame["final"]]
    if at == "best":
        scored = frame[frame["val/loss"].notna()] if "val/loss" in frame else frame.iloc[:0]
        if scored.empty:
            raise UserError("--at best needs val/loss, which these runs lack; use --at final")
        return scored.loc[scored.groupby("run_id")["val/loss"].idxmin()]
    try:
        step = int(at)
    except ValueError:
        raise UserError(f"--at {at!r}: use best, final or a training step (an integer)") from None
    if step <= 0:
        raise UserError(f"--at {step}: a training step must be positive")
    early = frame[frame["step"] <= step]
    if early.empty:
        raise UserError(f"--at {step}: no run was evaluated at or before step {step}")
    return early.loc[early.groupby("run_id")["step"].idxmax()]


def cell_keys(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per cell (the index): its science keys, as in the runs' configs."""
    return rows.groupby("cell")[config.cell_columns(list(rows.columns))].first()


def select_cells(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """The rows whose config matches every condition of `where`: "s=2", "L=3, v=16|32"; a key
    is a grammar letter (v m s L) or a config key ("model.width", or its last part "width")."""
    if not where.strip():
        return frame
    keep = np.ones(len(frame), dtype=bool)
    for condition in where.split(","):
        key, eq, values = (part.strip() for part in condition.partition("="))
        if not eq or not key or not values:
            raise UserError(f'--where {where!r}: write key=value conditions, e.g. "s=2, L=3"')
        column = where_column(frame, key)
        wanted = {value.strip() for value in values.split("|")}
        present = frame[column]
        matches = present.astype(str).isin(wanted)
        numeric = pd.to_numeric(pd.Series(sorted(wanted)), errors="coerce").dropna()
        if len(numeric) and pd.api.types.is_numeric_dtype(present):
            matches |= present.isin(numeric.to_numpy())
        if not matches.any():
            have = ", ".join(map(str, sorted(present.dropna().unique())))
            raise UserError(f"--where {condition.strip()!r} selects no runs; {key} is {have}")
        keep &= matches.to_numpy()
    selected = frame[keep]
    if selected.empty:
        raise UserError(f"--where {where!r} selects no runs (each condition alone selects some)")
    return selected


def where_column(frame: pd.DataFrame, key: str) -> str:
    if key in config.GRAMMAR_KEYS:
        return config.GRAMMAR_KEYS[key]
    if key in frame.columns:
        return key
    ends = [c for c in frame.columns if c.endswith("." + key)]
    if len(ends) == 1:
        return ends[0]
    keys = sorted(config.GRAMMAR_KEYS) + config.cell_columns(list(frame.columns))
    raise UserError(
        f"--where: unknown key {key!r}"
        + (f" (ambiguous: {', '.join(ends)})" if ends else "")
        + f"; use one of: {', '.join(dict.fromkeys(keys))}"
    )
