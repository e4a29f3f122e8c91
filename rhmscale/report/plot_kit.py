"""What every figure draws from (Inputs, prepare) and draws with: panels, colours, markers,
log axes with compact labels, error bars, legends, and the figure that says why it is empty.

Figures are `matplotlib.figure.Figure`s rendered by the Agg canvas: no pyplot, so no global
backend or figure registry is touched (safe in notebooks, report builders and threads).
"""

from __future__ import annotations

import math
import re
import textwrap
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Text
from matplotlib.ticker import Formatter, LogFormatter

from rhmscale.config import GRAMMAR_KEYS
from rhmscale.results.cells import rows_at, with_cells
from rhmscale.results.fit import FitResult

DPI = 120
MAX_PANELS = 16  # cells per figure; the title says when some were left out
P_LABEL = "dataset size P (training sequences)"
SAMPLES_LABEL = "samples seen (sequences)"
LEVEL_COLORS = colormaps["tab10"].colors
# Levels' markers where colour tells cells apart: no triangles, those mark censored points.
LEVEL_MARKERS = ["o", "s", "D", "P", "X", "p", "h", "*"]
CELL_MARKERS = ["o", "s", "D", "^", "v", "<", ">", "P", "*", "X", "p", "h", "d", "+", "x", "1"]
# Censored crossings: an open triangle pointing the way the true value lies.
CENSORED_MARKER_Y = {"below": "v", "above": "^"}  # on an axis of the crossing's value
CENSORED_MARKER_X = {"below": "<", "above": ">"}  # on an axis of P
CENSORED_AT_P = {"below": "below the smallest P", "above": "above the largest P"}


AT_WORDS = {"best": "at each run's lowest val/loss", "final": "at each run's last evaluation"}
METRIC = re.compile(r"gen/(novel_)?(tuple_)?acc_l(\{k\}|\d+)")


def metric_words(metric: str) -> str:
    """gen/novel_acc_l{k} -> 'accuracy of novel samples, through level k': what a reader of a
    figure needs instead of the key (an unknown key is returned as it is)."""
    found = METRIC.fullmatch(metric)
    if found is None:
        return metric
    novel, tuple_, level = found.groups()
    level = "k" if level == "{k}" else level
    which = "novel samples" if novel else "samples (copies included)"
    if tuple_:
        return f"level-{level} rule accuracy of {which}"
    return f"accuracy of {which}, through level {level}"


def sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


@dataclass
class Inputs:
    """What every figure draws from: the fit and the evaluations it used."""

    result: FitResult
    frame: pd.DataFrame  # every evaluation, with a "cell" column
    rows: pd.DataFrame  # the fit's evaluation row of each run (options.at)
    cells: list[str]  # the cells drawn: at most MAX_PANELS
    n_cells: int  # all cells of the sweep

    def metric(self, k: int) -> str:
        return self.result.options.metric.format(k=k)

    def words(self) -> str:
        """The metric in words, its level written k."""
        return metric_words(self.result.options.metric)

    def at_words(self) -> str:
        at = str(self.result.options.at)
        return AT_WORDS.get(at, f"at step {at}")

    def levels(self, cell: str) -> list[int]:
        """Levels 1..L of the cell whose metric was recorded."""
        group = self.rows[self.rows["cell"] == cell]
        depth = int(group[GRAMMAR_KEYS["L"]].max()) if GRAMMAR_KEYS["L"] in group else 0
        return [k for k in range(1, depth + 1) if self.metric(k) in group]

    def all_levels(self) -> list[int]:
        return sorted({k for cell in self.cells for k in self.levels(cell)})

    def crossing(self, cell: str, k: int) -> pd.Series | None:
        points = self.result.crossings
        if points.empty:
            return None
        found = points[(points["cell"] == cell) & (points["k"] == k)]
        return None if found.empty else found.iloc[0]

    def title(self, text: str) -> str:
        if self.n_cells > len(self.cells):
            return f"{text} (first {len(self.cells)} of {self.n_cells} cells)"
        return text


def prepare(frame: pd.DataFrame, result: FitResult) -> Inputs:
    """What the figures draw: the collected table with cells, the fit's rows, the cells shown."""
    frame = with_cells(frame)
    rows = rows_at(frame, result.options.at)
    # Cells in the order of their grammar numbers (v=8 before v=16), then their labels.
    order = rows.drop_duplicates("cell").sort_values([*GRAMMAR_KEYS.values(), "cell"])
    cells = list(order["cell"])
    return Inputs(result, frame, rows, cells[:MAX_PANELS], len(cells))


# --- drawing helpers --------------------------------------------------------------------------


def level_color(k: int) -> tuple[float, float, float]:
    return LEVEL_COLORS[(k - 1) % len(LEVEL_COLORS)]


def cell_color(index: int, n: int) -> tuple[float, float, float]:
    """The colour of the index-th of n cells: tab10, or tab20 for more than 10 cells."""
    colors = colormaps["tab10" if n <= 10 else "tab20"].colors
    return colors[index % len(colors)]


def level_marker(k: int) -> str:
    return LEVEL_MARKERS[(k - 1) % len(LEVEL_MARKERS)]


def seed_summary(group: pd.DataFrame, by: str, column: str) -> pd.DataFrame:
    """Mean, min and max over seeds of `column` at each value of `by` (sorted, positive)."""
    values = group[[by, column]].dropna()
    values = values[values[by] > 0]
    return values.groupby(by)[column].agg(["mean", "min", "max"]).sort_index()


def panels(data: Inputs, title: str, *, sharey: bool) -> tuple[Figure, list[Axes]]:
    """One panel per drawn cell, at most 4 a row."""
    n = max(1, len(data.cells))
    ncols = min(4, math.ceil(math.sqrt(n)))
    nrows = math.ceil(n / ncols)
    size = (max(3.3 * ncols + 2.4, 8.0), max(2.7 * nrows + 0.9, 4.4))
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    grid = fig.subplots(nrows, ncols, sharey=sharey, squeeze=False)
    axes = list(grid.flat)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(data.title(title))
    return fig, axes[:n]


def wrapped(fig: Figure, label: Text, height: float) -> None:
    """A vertical label rewrapped into as many lines as keep it within `height` pixels (a
    one-row figure is too short for a long label on one or two lines)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    text = label.get_text()
    flat = " ".join(text.split())
    width = max(len(line) for line in text.split("\n"))
    while label.get_window_extent(renderer).height > height and width > 12:
        width = int(width * 0.85)
        label.set_text(textwrap.fill(flat, width))


def supylabel(fig: Figure, text: str) -> None:
    """The figure's y label, wrapped to stay inside the figure's height."""
    wrapped(fig, fig.supylabel(text), 0.95 * fig.bbox.height)


def ylabel(ax: Axes, text: str) -> None:
    """An axes' y label, wrapped to stay inside the figure's height (less a title's room)."""
    wrapped(ax.figure, ax.set_ylabel(text), 0.8 * ax.figure.bbox.height)


def message_figure(title: str, message: str) -> Figure:
    """A figure that says why there is nothing to draw."""
    fig = Figure(figsize=(6.4, 3.2), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, textwrap.fill(message, 60), ha="center", va="center", transform=ax.transAxes)
    return fig


def error_bars(center: pd.Series, lo: pd.Series, hi: pd.Series) -> np.ndarray:
    """Asymmetric error bars, never negative (a percentile interval may miss its estimate)."""
    return np.clip(np.vstack([center - lo, hi - center]).astype(float), 0, None)


def censored_handles(
    sides: set[str],
    labels: dict[str, str],
    *,
    on_y: bool,
    ms: float = 7,
    mew: float | None = None,
) -> list[Line2D]:
    """Legend entries of the hollow censored markers drawn (`sides`: "below", "above"), in the
    order of `labels` (each side's words); a side not drawn gets no entry. mew None: the style's
    edge width."""
    markers = CENSORED_MARKER_Y if on_y else CENSORED_MARKER_X
    return [
        Line2D(
            [],
            [],
            ls="none",
            marker=markers[side],
            mfc="none",
            mec="0.3",
            ms=ms,
            mew=mew,
            label=label,
        )  # fmt: skip
        for side, label in labels.items()
        if side in sides
    ]


def level_handles(levels: list[int]) -> list[Line2D]:
    return [
        Line2D([], [], color=level_color(k), marker="o", ms=4, label=f"level {k}") for k in levels
    ]


def compact(x: float) -> str:
    """300, 2k, 50k, 1.5M: short labels that do not collide in narrow panels."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


class CompactLogFormatter(LogFormatter):
    """Labels where LogFormatter puts them (decades; some 2s, 5s over a short range), written
    compactly: the default 3x10^3 labels overlap when a panel spans less than a decade."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return compact(x) if super().__call__(x, pos) else ""


def compact_ticks(axis: Axis) -> None:
    """Tick labels of a log axis in CompactLogFormatter's style."""
    axis.set_major_formatter(CompactLogFormatter(labelOnlyBase=False))
    axis.set_minor_formatter(CompactLogFormatter(labelOnlyBase=False))


def scale_log(ax: Axes, *, y: bool = False) -> None:
    """Log x (and y) with compact tick labels."""
    ax.set_xscale("log")
    if y:
        ax.set_yscale("log")
    for axis in [ax.xaxis, ax.yaxis] if y else [ax.xaxis]:
        compact_ticks(axis)
    ax.grid(True, which="major", alpha=0.3)


class HideSome(Formatter):
    """Another formatter's labels, but none at the values in `hidden` (labels that overlapped)."""

    def __init__(self, inner: Formatter, hidden: list[float]) -> None:
        self.inner, self.hidden = inner, np.asarray(hidden, float)

    def set_locs(self, locs: list[float]) -> None:
        self.inner.set_locs(locs)

    def __call__(self, x: float, pos: int | None = None) -> str:
        if len(self.hidden) and np.isclose(self.hidden, x, rtol=1e-9, atol=0).any():
            return ""
        return self.inner(x, pos)


def overlapping(boxes: list, vertical: bool, pad: float = 3.0) -> list[int]:
    """Indices of the boxes to hide so that no two kept ones overlap (pad pixels apart); boxes
    are kept in the order given (major labels first)."""
    kept, hide = [], []
    for i, box in enumerate(boxes):
        lo, hi = (box.y0, box.y1) if vertical else (box.x0, box.x1)
        if any(lo < k_hi + pad and k_lo < hi + pad for k_lo, k_hi in kept):
            hide.append(i)
        else:
            kept.append((lo, hi))
    return hide


def declutter_ticks(fig: Figure) -> None:
    """Leave out tick labels that would overlap another (major labels win over minor ones),
    at the figure's final layout: narrow panels and short log ranges crowd them."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        for axis, vertical in ((ax.xaxis, False), (ax.yaxis, True)):
            lo, hi = sorted(axis.get_view_interval())
            labels = []
            for ticks in (axis.get_major_ticks(), axis.get_minor_ticks()):
                for tick in ticks:
                    label = tick.label1 if tick.label1.get_visible() else tick.label2
                    if lo <= tick.get_loc() <= hi and label.get_visible() and label.get_text():
                        labels.append((tick.get_loc(), label.get_window_extent(renderer)))
            hide = [labels[i][0] for i in overlapping([b for _, b in labels], vertical)]
            if hide:
                axis.set_major_formatter(HideSome(axis.get_major_formatter(), hide))
                axis.set_minor_formatter(HideSome(axis.get_minor_formatter(), hide))
