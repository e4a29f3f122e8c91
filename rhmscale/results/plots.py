"""PNG figures of a fitted sweep, one function per figure.

- accuracy_vs_p: accuracy of each level against dataset size P, one panel per cell;
- collapse: the same curves against P / P_k(theory), every cell overlaid;
- p_star_vs_theory: measured P*_k against the theory's P_k, with the fitted law;
- coherence_vs_p: coherence length s**depth against P, with its power-law fit per cell;
- coherence_vs_time: coherence length along training, one line per P, one panel per cell;
- time_to_learn: samples seen when each level is learnt, against P.

Figures are `matplotlib.figure.Figure`s rendered by the Agg canvas: no pyplot, so no global
backend or figure registry is touched (safe in notebooks, report builders and threads). Each
file is written to a temporary name beside it and renamed into place. Every figure is written
even when its data is missing (a failed exponent fit, no training-time evaluations); it then
says what is missing, so the set of files, and a report's links to them, never change.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import LogFormatter

from rhmscale.results.fit import GRAMMAR, SIZE, FitResult, rows_at, variables, with_cells
from rhmscale.results.theory import Theory, design_matrix
from rhmscale.store.atomic import atomic_write

DPI = 120
MAX_PANELS = 16  # cells per figure; the title says when some were left out
COHERENCE = "gen/coherence_length"
P_LABEL = "dataset size P (training sequences)"
SAMPLES_LABEL = "samples seen (sequences)"
LEVEL_COLORS = colormaps["tab10"].colors
CELL_MARKERS = ["o", "s", "D", "^", "v", "<", ">", "P", "*", "X", "p", "h", "d", "+", "x", "1"]
# Censored crossings: an open triangle pointing the way the true value lies.
CENSORED_MARKER_Y = {"below": "v", "above": "^"}  # on an axis of the crossing's value
CENSORED_MARKER_X = {"below": "<", "above": ">"}  # on an axis of P
STACK = 1.25  # factor between levels' censored markers at one bound on a log axis


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

    def levels(self, cell: str) -> list[int]:
        """Levels 1..L of the cell whose metric was recorded."""
        group = self.rows[self.rows["cell"] == cell]
        depth = int(group[GRAMMAR["L"]].max()) if GRAMMAR["L"] in group else 0
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
    frame, _ = with_cells(frame)
    if COHERENCE not in frame and "gen/coherence_depth" in frame:
        frame[COHERENCE] = frame[GRAMMAR["s"]].astype(float) ** frame["gen/coherence_depth"]
    rows = rows_at(frame, result.options.at)
    # Cells in the order of their grammar numbers (v=8 before v=16), then their labels.
    order = rows.drop_duplicates("cell").sort_values([*GRAMMAR.values(), "cell"])
    cells = list(order["cell"])
    return Inputs(result, frame, rows, cells[:MAX_PANELS], len(cells))


# --- drawing helpers --------------------------------------------------------------------------


def level_color(k: int) -> tuple[float, float, float]:
    return LEVEL_COLORS[(k - 1) % len(LEVEL_COLORS)]


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


def censored_handles(color: str = "0.3", *, on_y: bool) -> list[Line2D]:
    markers = CENSORED_MARKER_Y if on_y else CENSORED_MARKER_X
    where = {"below": "below the smallest", "above": "above the largest"}
    return [
        Line2D(
            [],
            [],
            ls="none",
            marker=markers[side],
            mfc="none",
            mec=color,
            ms=7,
            label=f"censored: {where[side]} P",
        )
        for side in ("below", "above")
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


def scale_log(ax: Axes, *, y: bool = False) -> None:
    """Log x (and y) with compact tick labels."""
    axes = [ax.xaxis, ax.yaxis] if y else [ax.xaxis]
    ax.set_xscale("log")
    if y:
        ax.set_yscale("log")
    for axis in axes:
        axis.set_major_formatter(CompactLogFormatter(labelOnlyBase=False))
        axis.set_minor_formatter(CompactLogFormatter(labelOnlyBase=False))
    ax.grid(True, which="major", alpha=0.3)


# --- figures ----------------------------------------------------------------------------------


def accuracy_vs_p(data: Inputs) -> Figure:
    """Seed-mean accuracy of each level against P per cell, seed min-max band, P*_k marked."""
    options = data.result.options
    fig, axes = panels(data, f"{options.metric} against dataset size", sharey=True)
    threshold = options.threshold
    for ax, cell in zip(axes, data.cells, strict=False):
        group = data.rows[data.rows["cell"] == cell]
        for k in data.levels(cell):
            color = level_color(k)
            summary = seed_summary(group, SIZE, data.metric(k))
            x = summary.index.to_numpy(float)
            ax.plot(x, summary["mean"], "o-", color=color, ms=3, lw=1.4)
            ax.fill_between(x, summary["min"], summary["max"], color=color, alpha=0.2, lw=0)
            if len(x) == 1:  # no band to fill: the spread as a bar
                ax.vlines(x, summary["min"], summary["max"], color=color, alpha=0.4, lw=4)
            point = data.crossing(cell, k)
            if point is None:
                continue
            if point["censored"]:
                # At the bound it is censored at; levels set apart vertically, as several are
                # often censored at the same bound.
                marker = CENSORED_MARKER_X[point["censored"]]
                y = np.clip(threshold + 0.06 * (k - 1), 0.03, 0.97)
                ax.plot(point["P_star"], y, marker, mfc="white", mec=color, mew=1.5, ms=9)
            else:
                xerr = error_bars(*(pd.Series([point[c]]) for c in ("P_star", "P_lo", "P_hi")))
                ax.errorbar(
                    point["P_star"],
                    threshold,
                    xerr=xerr,
                    fmt="o",
                    mfc="white",
                    mec=color,
                    mew=1.5,
                    ms=7,
                    color=color,
                    capsize=3,
                    zorder=5,
                )
        ax.axhline(threshold, ls="--", color="0.4", lw=1)
        scale_log(ax)
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(cell, fontsize=9)
    fig.supxlabel(P_LABEL)
    fig.supylabel(f"{options.metric} (fraction), at {options.at}")
    handles = level_handles(data.all_levels()) + [
        Patch(color="0.6", alpha=0.4, label="band: seed min-max"),
        Line2D([], [], ls="--", color="0.4", label=f"threshold {threshold:g}"),
        Line2D(
            [],
            [],
            ls="-",
            marker="o",
            mfc="white",
            mec="0.3",
            color="0.3",
            label=f"P*_k, {options.ci:.0%} bootstrap CI",
        ),
        *censored_handles(on_y=False),
    ]
    fig.legend(handles=handles, loc="outside right center", fontsize=8)
    return fig


def theory_of(data: Inputs, group: pd.DataFrame, k: int) -> np.ndarray:
    """P_k(theory) of each row of `group`."""
    x = {n: group[col].to_numpy(float) for n, col in GRAMMAR.items()}
    x["k"] = np.full(len(group), float(k))
    return Theory(data.result.options.theory)(x)


def theory_prefactor(result: FitResult) -> float | None:
    """The theory's best prefactor: the geometric mean of P*_k / P_k(theory) over the measured
    points, i.e. the least-squares prefactor of the theory with its own exponents. (The fit's
    prefactor belongs to the fitted exponents, not the theory's, and is shown beside them.)
    None when no P*_k was measured: censored bounds say nothing about it."""
    points = result.crossings
    if points.empty:
        return None
    ratios = points.loc[points["censored"] == "", "ratio"].to_numpy(float)
    ratios = ratios[np.isfinite(ratios) & (ratios > 0)]
    return float(np.exp(np.mean(np.log(ratios)))) if len(ratios) else None


def collapse(data: Inputs) -> Figure:
    """The accuracy curves of every cell against P / P_k(theory): one curve if the law holds."""
    options = data.result.options
    fig = Figure(figsize=(8.6, 5.2), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    for index, cell in enumerate(data.cells):
        group = data.rows[data.rows["cell"] == cell]
        marker = CELL_MARKERS[index % len(CELL_MARKERS)]
        for k in data.levels(cell):
            column = data.metric(k)
            scaled = group.assign(x=group[SIZE].to_numpy(float) / theory_of(data, group, k))
            summary = seed_summary(scaled, "x", column)
            ax.plot(
                summary.index,
                summary["mean"],
                ls="-",
                lw=0.8,
                alpha=0.8,
                marker=marker,
                ms=4,
                color=level_color(k),
            )
    prefactor = theory_prefactor(data.result)
    ax.axhline(options.threshold, ls="--", color="0.4", lw=1)
    if prefactor is not None:
        ax.axvline(prefactor, ls=":", color="k", lw=1.2)
    scale_log(ax)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(f"P / P_k(theory),  P_k(theory) = {options.theory}")
    ax.set_ylabel(f"{options.metric} (fraction, seed mean), at {options.at}")
    ax.set_title(data.title("Collapse on the theory's sample complexity"))
    handles = level_handles(data.all_levels()) + [
        Line2D(
            [], [], ls="none", marker=CELL_MARKERS[i % len(CELL_MARKERS)], color="0.3", label=cell
        )
        for i, cell in enumerate(data.cells)
    ]
    handles.append(Line2D([], [], ls="--", color="0.4", label=f"threshold {options.threshold:g}"))
    if prefactor is not None:
        label = f"measured P*/P_theory = {prefactor:.3g}\n(geometric mean)"
        handles.append(Line2D([], [], ls=":", color="k", label=label))
    fig.legend(handles=handles, loc="outside right center", fontsize=8)
    return fig


def exponent_table(result: FitResult) -> str:
    """The annotation of p_star_vs_theory: the exponents beside the theory, R^2, counts."""
    stats, exps = result.stats, result.exponents
    if exps.empty:
        reason = stats.get("fit_error", "no exponents")
        return "no exponent fit:\n" + textwrap.fill(reason, 48)
    ci = f"[{result.options.ci:.0%} CI]"
    width = max(len("exponent"), *(len(t) for t in exps["term"]))
    lines = [f"{'exponent':<{width}}  estimate {ci:<15} theory"]
    for row in exps.itertuples():
        interval = f"[{row.lo:.3f}, {row.hi:.3f}]"
        lines.append(f"{row.term:<{width}}  {row.estimate:<8.3f} {interval:<15} {row.theory:g}")
    lines.append(f"R² = {stats['r2']:.3f}   prefactor = {stats['prefactor']:.3g}")
    lines.append(f"{stats['n_points']} points, {stats['n_censored']} censored (open triangles)")
    return "\n".join(lines)


def p_star_vs_theory(data: Inputs) -> Figure:
    """Measured P*_k (bootstrap interval) against P_k(theory), the theory line, the fitted law."""
    result, options = data.result, data.result.options
    title = "Measured sample complexity against the theory"
    points = result.crossings
    if points.empty:
        return message_figure(title, "no P*_k: no cell has a measured level")
    points = points[points["P_theory"] > 0]
    fig = Figure(figsize=(7.6, 6.2), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    for k, group in points.groupby("k"):
        color = level_color(int(k))
        measured = group[group["censored"] == ""]
        yerr = error_bars(measured["P_star"], measured["P_lo"], measured["P_hi"])
        ax.errorbar(
            measured["P_theory"],
            measured["P_star"],
            yerr=yerr,
            fmt="o",
            ms=5,
            color=color,
            capsize=2,
            label=f"level {k}",
        )
        for side, marker in CENSORED_MARKER_Y.items():
            censored = group[group["censored"] == side]
            ax.plot(
                censored["P_theory"],
                censored["P_star"],
                marker,
                mfc="none",
                mec=color,
                ms=8,
                mew=1.5,
            )
    span = points["P_theory"].to_numpy(float)
    x = np.geomspace(span.min() / 1.5, span.max() * 1.5, 50)
    prefactor = theory_prefactor(result)
    label = f"theory {options.theory} × {prefactor:.3g}" if prefactor else "P* = P_theory"
    ax.plot(x, (prefactor or 1.0) * x, "--", color="k", lw=1.2, label=label)
    if not result.exponents.empty:
        design = design_matrix(list(result.exponents["term"]), variables(points))
        coef = np.concatenate([[np.log(result.stats["prefactor"])], result.exponents["estimate"]])
        ax.plot(
            points["P_theory"],
            np.exp(design @ coef),
            "x",
            color="0.2",
            ms=6,
            mew=1.2,
            label="fitted law",
        )
    scale_log(ax, y=True)
    ax.set_xlabel(f"P_k(theory) = {options.theory}")
    ax.set_ylabel(f"measured P*_k (training sequences), {options.ci:.0%} bootstrap CI")
    ax.set_title(f"{title}\n(threshold {options.threshold:g} on {options.metric}, at {options.at})")
    ax.text(
        0.02,
        0.98,
        exponent_table(result),
        transform=ax.transAxes,
        va="top",
        ha="left",
        family="monospace",
        fontsize=7.5,
        bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85, "edgecolor": "0.7"},
    )
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + censored_handles(on_y=True), loc="lower right", fontsize=8)
    return fig


def coherence_vs_p(data: Inputs) -> Figure:
    """Seed-mean coherence length against P per cell (seed min-max bars), power-law fits."""
    title = "Coherence length against dataset size"
    if COHERENCE not in data.rows:
        return message_figure(title, f"{COHERENCE} was not recorded")
    fits = data.result.coherence
    fits = fits.set_index("cell") if not fits.empty else fits
    colors = colormaps["tab10" if len(data.cells) <= 10 else "tab20"].colors
    fig = Figure(figsize=(8.6, 5.2), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    for index, cell in enumerate(data.cells):
        color = colors[index % len(colors)]
        summary = seed_summary(data.rows[data.rows["cell"] == cell], SIZE, COHERENCE)
        if summary.empty:
            continue
        x = summary.index.to_numpy(float)
        yerr = error_bars(summary["mean"], summary["min"], summary["max"])
        label = f"{cell}: no fit (needs 2 sizes)"
        if cell in fits.index and np.isfinite(fits.loc[cell, "exponent"]):
            fit = fits.loc[cell]
            ax.plot(x, fit["prefactor"] * x ** fit["exponent"], "-", color=color, lw=1, alpha=0.7)
            label = f"{cell}: ∝ P^{fit['exponent']:.2f} (R² {fit['r2']:.2f})"
        ax.errorbar(
            x,
            summary["mean"],
            yerr=yerr,
            fmt=CELL_MARKERS[index % len(CELL_MARKERS)],
            ms=4,
            color=color,
            capsize=2,
            label=label,
        )
    scale_log(ax, y=True)
    ax.set_xlabel(P_LABEL)
    ax.set_ylabel("coherence length s^depth (tokens), seed mean")
    ax.set_title(data.title(f"{title}, at {data.result.options.at}"))
    fig.legend(loc="outside right center", fontsize=8, title="seed min-max bars; line = fit")
    return fig


def coherence_vs_time(data: Inputs) -> Figure:
    """Coherence length along training, one line per P coloured by log P, a panel per cell."""
    title = "Coherence length along training"
    if COHERENCE not in data.frame:
        return message_figure(title, f"{COHERENCE} was not recorded")
    frame = data.frame[data.frame["cell"].isin(data.cells) & (data.frame["samples_seen"] > 0)]
    if frame.empty:
        return message_figure(title, "no evaluation after the start of training")
    sizes = frame[SIZE].to_numpy(float)
    lo, hi = sizes.min(), sizes.max()
    norm = LogNorm(lo / 2, hi * 2) if lo == hi else LogNorm(lo, hi)
    cmap = colormaps["viridis"]
    fig, axes = panels(data, f"{title} (seed mean)", sharey=True)
    for ax, cell in zip(axes, data.cells, strict=False):
        group = frame[frame["cell"] == cell]
        for P, curve in group.groupby(SIZE):
            summary = seed_summary(curve, "samples_seen", COHERENCE)
            ax.plot(
                summary.index,
                summary["mean"],
                "-",
                marker="o",
                ms=3,
                lw=1.2,
                color=cmap(norm(float(P))),
            )
        scale_log(ax, y=True)
        ax.set_title(cell, fontsize=9)
    fig.supxlabel(SAMPLES_LABEL)
    fig.supylabel("coherence length s^depth (tokens)")
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, label=P_LABEL)
    bar.ax.yaxis.set_major_formatter(CompactLogFormatter(labelOnlyBase=False))
    bar.ax.yaxis.set_minor_formatter(CompactLogFormatter(labelOnlyBase=False))
    return fig


def time_to_learn(data: Inputs) -> Figure:
    """Samples seen when each level's accuracy crosses the threshold, against P, per cell."""
    options = data.result.options
    title = f"Samples seen until {options.metric} reaches {options.threshold:g}"
    times = data.result.time_crossings
    if times.empty:
        return message_figure(
            title, "no training-time crossings: runs need evaluations along training"
        )
    times = times[times["cell"].isin(data.cells)]
    fig, axes = panels(data, title, sharey=True)
    for ax, cell in zip(axes, data.cells, strict=False):
        for k, group in times[times["cell"] == cell].groupby("k"):
            color = level_color(int(k))
            group = group.sort_values(SIZE)
            measured = group[group["censored"] == ""]
            yerr = error_bars(
                measured["samples_star"], measured["samples_lo"], measured["samples_hi"]
            )
            ax.errorbar(
                measured[SIZE],
                measured["samples_star"],
                yerr=yerr,
                fmt="o-",
                ms=4,
                lw=1,
                color=color,
                capsize=2,
            )
            for side, marker in CENSORED_MARKER_Y.items():
                censored = group[group["censored"] == side]
                # Levels censored at one bound are stacked beyond it, the way the truth lies.
                beyond = STACK ** ((k - 1) * (1 if side == "above" else -1))
                ax.plot(
                    censored[SIZE],
                    censored["samples_star"] * beyond,
                    marker,
                    mfc="none",
                    mec=color,
                    ms=7,
                    mew=1.3,
                )
        scale_log(ax, y=True)
        ax.set_title(cell, fontsize=9)
    fig.supxlabel(P_LABEL)
    fig.supylabel(f"{SAMPLES_LABEL} at crossing")
    handles = level_handles(data.all_levels()) + [
        Line2D([], [], ls="none", marker="o", color="0.3", label=f"{options.ci:.0%} bootstrap CI"),
    ]
    where = {
        "below": "before the first evaluation (levels stacked below)",
        "above": "not by the last evaluation (levels stacked above)",
    }
    handles += [
        Line2D(
            [], [], ls="none", marker=m, mfc="none", mec="0.3", ms=7, label=f"censored: {where[s]}"
        )
        for s, m in CENSORED_MARKER_Y.items()
    ]
    fig.legend(handles=handles, loc="outside right center", fontsize=8)
    return fig


FIGURES: dict[str, Callable[[Inputs], Figure]] = {
    "accuracy_vs_P.png": accuracy_vs_p,
    "collapse.png": collapse,
    "p_star_vs_theory.png": p_star_vs_theory,
    "coherence_vs_P.png": coherence_vs_p,
    "coherence_vs_time.png": coherence_vs_time,
    "time_to_learn.png": time_to_learn,
}


def save(fig: Figure, path: Path) -> Path:
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=DPI))
    return path


def write_figures(frame: pd.DataFrame, result: FitResult, out_dir: Path) -> list[Path]:
    """Every figure of `FIGURES` as a PNG in out_dir; returns their paths in that order."""
    data = prepare(frame, result)
    out_dir = Path(out_dir)
    return [save(draw(data), out_dir / name) for name, draw in FIGURES.items()]
