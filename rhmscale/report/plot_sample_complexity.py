"""Figures of the sample complexity: the accuracy curves it is read from, their collapse on
the theory, and the measured P*_k against the theory's P_k with the fitted law.

- accuracy_vs_p: accuracy of each level against dataset size P, one panel per cell;
- collapse: the same curves against P / P_k(theory), every cell overlaid;
- p_star_vs_theory: measured P*_k against the theory's P_k, with the fitted law.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from rhmscale.report.plot_kit import (
    CELL_MARKERS,
    CENSORED_AT_P,
    CENSORED_MARKER_X,
    CENSORED_MARKER_Y,
    DPI,
    P_LABEL,
    Inputs,
    cell_color,
    censored_handles,
    error_bars,
    level_color,
    level_handles,
    level_marker,
    message_figure,
    panels,
    scale_log,
    seed_summary,
    sentence,
    supylabel,
    ylabel,
)
from rhmscale.results.cells import SIZE, variables
from rhmscale.results.fit import FitResult
from rhmscale.results.options import level_range
from rhmscale.results.theory import Theory, design_matrix

# The legend words of a censored crossing drawn on its level's curve (accuracy_vs_p).
ON_CURVE = {
    side: f"censored: {where}, on its level's curve" for side, where in CENSORED_AT_P.items()
}


def accuracy_vs_p(data: Inputs) -> Figure:
    """Seed-mean accuracy of each level against P per cell, seed min-max band, P*_k marked."""
    options = data.result.options
    fig, axes = panels(data, sentence(f"{data.words()}, against dataset size"), sharey=True)
    threshold = options.threshold
    sides, measured = set(), False  # what was drawn: the legend lists only that
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
                # At the bound it is censored at, on its own level's curve (several levels are
                # often censored at one bound: each marker sits on the curve of its colour).
                marker = CENSORED_MARKER_X[point["censored"]]
                sides.add(point["censored"])
                y = np.interp(np.log(point["P_star"]), np.log(x), summary["mean"])
                ax.plot(
                    point["P_star"],
                    y,
                    marker,
                    mfc="white",
                    mec=color,
                    mew=1.5,
                    ms=9,
                    zorder=5,
                    gid="censored",
                )
            else:
                measured = True
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
    supylabel(fig, f"{data.words()} (fraction),\n{data.at_words()}")
    handles = level_handles(data.all_levels()) + [
        Patch(color="0.6", alpha=0.4, label="band: seed min-max"),
        Line2D([], [], ls="--", color="0.4", label=f"threshold {threshold:g}"),
    ]
    if measured:
        handles.append(
            Line2D(
                [],
                [],
                ls="-",
                marker="o",
                mfc="white",
                mec="0.3",
                color="0.3",
                label=f"P*_k, {options.ci:.0%} bootstrap CI",
            )
        )
    handles += censored_handles(sides, ON_CURVE, on_y=False)
    fig.legend(handles=handles, loc="outside right center", fontsize=8)
    return fig


def theory_of(data: Inputs, group: pd.DataFrame, k: int) -> np.ndarray:
    """P_k(theory) of each row of `group`."""
    return Theory(data.result.options.theory)(variables(group.assign(k=k)))


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
    ylabel(ax, f"{data.words()} (fraction, seed mean),\n{data.at_words()}")
    ax.set_title(data.title("Collapse on the theory's sample complexity"))
    handles = level_handles(data.all_levels()) + [
        Line2D(
            [], [], ls="none", marker=CELL_MARKERS[i % len(CELL_MARKERS)], color="0.3", label=cell
        )
        for i, cell in enumerate(data.cells)
    ]
    handles.append(Line2D([], [], ls="--", color="0.4", label=f"threshold {options.threshold:g}"))
    if prefactor is not None:
        label = f"ratio to theory P*/P_k = {prefactor:.3g}\n(geometric mean)"
        handles.append(Line2D([], [], ls=":", color="k", label=label))
    fig.legend(handles=handles, loc="outside right center", fontsize=8)
    return fig


def levels_text(levels: list[int]) -> str:
    """[2, 3] -> 'levels 2-3', [1] -> 'level 1', [1, 3] -> 'levels 1, 3'."""
    if len(levels) == 1:
        return f"level {levels[0]}"
    if levels == list(range(levels[0], levels[-1] + 1)):
        return f"levels {levels[0]}-{levels[-1]}"
    return "levels " + ", ".join(map(str, levels))


def counts_text(points: pd.DataFrame) -> str:
    """'levels 1-3: 11 measured + 1 censored': what is drawn of these points (as the fit's
    summary counts them: measured points, and censored ones beside them)."""
    levels = sorted(int(k) for k in points["k"].unique())
    n_censored = int((points["censored"] != "").sum())
    return f"{levels_text(levels)}: {len(points) - n_censored} measured + {n_censored} censored"


def exponent_table(result: FitResult, fitted: pd.DataFrame, others: pd.DataFrame) -> str:
    """The annotation of p_star_vs_theory: the exponents beside the theory, R^2, the fitted
    prefactor, and the counts of the points drawn, fitted and not."""
    stats, exps = result.stats, result.exponents
    if exps.empty:
        reason = stats.get("fit_error", "no exponents")
        lines = ["no exponent fit:", *textwrap.wrap(reason, 48)]
    else:
        ci = f"[{result.options.ci:.0%} CI]"
        width = max(len("exponent"), *(len(t) for t in exps["term"]))
        lines = [f"{'exponent':<{width}}  estimate {ci:<15} theory"]
        for row in exps.itertuples():
            interval = f"[{row.lo:.3f}, {row.hi:.3f}]"
            lines.append(f"{row.term:<{width}}  {row.estimate:<8.3f} {interval:<15} {row.theory:g}")
        lines.append(f"R² = {stats['r2']:.3f}   fitted law's prefactor {stats['prefactor']:.3g}")
    if not fitted.empty:
        lines.append(f"fitted, {counts_text(fitted)}")
    if not others.empty:
        lines.append(f"not fitted (pale), {counts_text(others)}")
    return "\n".join(lines)


BEYOND = 1.5  # factor from a censored P*_k's bound to its marker, the way the truth lies
BEYOND_WORDS = "\n(hollow, beyond the bound it is joined to)"
CENSORED_WORDS = {  # the legend words of a censored P*_k (p_star_vs_theory)
    "above": "> P_max: not learned up to the largest P" + BEYOND_WORDS,
    "below": "≤ P_min: learned at the smallest P" + BEYOND_WORDS,
}


def draw_crossings(ax, data: Inputs, points: pd.DataFrame, fitted: tuple[int, int]) -> list:
    """P*_k against P_k(theory): a colour per cell, a marker per level (pale: not fitted); a
    censored P*_k as a hollow triangle beyond its bound, joined to it by a line, so that it
    never sits on the theory line as a measured point would. Returns the legend entries of
    what was drawn: cells, levels, censored sides."""
    low, high = fitted
    handles, sides = [], set()
    for index, cell in enumerate(data.cells):
        color = cell_color(index, len(data.cells))
        of_cell = points[points["cell"] == cell]
        if not of_cell.empty:
            handles.append(Patch(color=color, label=cell))
        for k, group in of_cell.groupby("k"):
            alpha = 1.0 if low <= k <= high else 0.45
            measured = group[group["censored"] == ""]
            yerr = error_bars(measured["P_star"], measured["P_lo"], measured["P_hi"])
            x, y = measured["P_theory"], measured["P_star"]
            ax.errorbar(x, y, yerr=yerr, fmt="none", color=color, alpha=alpha, capsize=2)
            ax.plot(x, y, level_marker(int(k)), ms=6, color=color, alpha=alpha, gid="measured")
            for side, marker in CENSORED_MARKER_Y.items():
                censored = group[group["censored"] == side]
                if censored.empty:
                    continue
                sides.add(side)
                bound = censored["P_star"].to_numpy(float)
                beyond = bound * (BEYOND if side == "above" else 1 / BEYOND)
                x = censored["P_theory"].to_numpy(float)
                ax.plot(np.vstack([x, x]), np.vstack([bound, beyond]), "-", color=color,
                        lw=1, alpha=alpha, gid="censored bound")  # fmt: skip
                ax.plot(x, beyond, marker, mfc="none", mec=color, alpha=alpha, ms=8, mew=1.5,
                        gid="censored")  # fmt: skip
    for k in sorted(int(k) for k in points["k"].unique()):
        pale = "" if low <= k <= high else " (not fitted, pale)"
        handles.append(Line2D([], [], ls="none", marker=level_marker(k), color="0.3",
                              label=f"level {k}{pale}"))  # fmt: skip
    return handles + censored_handles(sides, CENSORED_WORDS, on_y=True, ms=8, mew=1.5)


def p_star_vs_theory(data: Inputs) -> Figure:
    """Measured P*_k (bootstrap interval) against P_k(theory), the theory line, the fitted law
    at the points of the fitted levels (--levels); the other levels' points pale."""
    result, options = data.result, data.result.options
    title = "Measured sample complexity against the theory"
    points = result.crossings
    if points.empty:
        return message_figure(title, "no P*_k: no cell has a measured level")
    points = points[points["P_theory"] > 0]
    low, high = level_range(options.levels)
    in_fit = points["k"].between(low, high)
    fig = Figure(figsize=(9.4, 6.2), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    handles = draw_crossings(ax, data, points, (low, high))
    span = points["P_theory"].to_numpy(float)
    x = np.geomspace(span.min() / 1.5, span.max() * 1.5, 50)
    prefactor = theory_prefactor(result)
    label = (
        f"theory {options.theory} × {prefactor:.3g}\n({prefactor:.3g}: ratio to theory, "
        "geometric mean of P*/P_k)"
        if prefactor
        else "P* = P_theory"
    )
    ax.plot(x, (prefactor or 1.0) * x, "--", color="k", lw=1.2, label=label)
    if not result.exponents.empty and in_fit.any():
        shown = points[in_fit]
        design = design_matrix(list(result.exponents["term"]), variables(shown))
        coef = np.concatenate([[np.log(result.stats["prefactor"])], result.exponents["estimate"]])
        ax.plot(
            shown["P_theory"],
            np.exp(design @ coef),
            "x",
            color="0.2",
            ms=6,
            mew=1.2,
            label=f"fitted law, {levels_text(sorted(int(k) for k in shown['k'].unique()))}",
            gid="fitted law",
        )
    scale_log(ax, y=True)
    ax.set_xlabel(f"P_k(theory) = {options.theory}")
    ylabel(ax, f"measured P*_k (training sequences), {options.ci:.0%} bootstrap CI")
    ax.set_title(
        f"{title}\n"
        + textwrap.fill(
            f"(P*_k: the P where {data.words()} reaches {options.threshold:g}, {data.at_words()})",
            90,
        ),
        fontsize=10,
    )
    ax.text(
        0.02,
        0.98,
        exponent_table(result, points[in_fit], points[~in_fit]),
        transform=ax.transAxes,
        va="top",
        ha="left",
        family="monospace",
        fontsize=7.5,
        bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85, "edgecolor": "0.7"},
        gid="exponent table",
    )
    lines, _ = ax.get_legend_handles_labels()
    fig.legend(handles=lines + handles, loc="outside right center", fontsize=8)
    return fig
