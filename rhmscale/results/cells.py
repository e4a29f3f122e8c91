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

(SIZE,) = [key for key, kind in config.key_roles().items() if kind.role == config.SIZE]
# The theory's names of the grammar numbers, and the columns that hold them.
GRAMMAR = {"v": "grammar.v", "m": "grammar.m", "s": "grammar.s", "L": "grammar.L"}
# Cells in numeric order of L, v, m, s (labels would sort v=16 before v=8).
CELL_ORDER = [GRAMMAR[n] for n in ("L", "v", "m", "s")] + ["cell"]


def cell_labels(frame: pd.DataFrame, keys: list[str]) -> pd.Series:
    """'v=16 m=4 s=2 L=3' plus any other key that differs between cells."""
    varying = [k for k in keys if k not in GRAMMAR.values() and frame[k].nunique() > 1]
    parts = [f"{short}=" + frame[col].astype(str) for short, col in GRAMMAR.items()]
    parts += [f"{k.split('.')[-1]}=" + frame[k].astype(str) for k in varying]
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
    return {short: int(group[col].iloc[0]) for short, col in GRAMMAR.items()}


def variables(points: pd.DataFrame) -> dict[str, np.ndarray]:
    """The theory's variables v, m, s, L, k of each row of a table with a level column "k"."""
    out = {n: points[col].to_numpy(dtype=float) for n, col in GRAMMAR.items()}
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
