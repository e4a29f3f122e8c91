"""The figure of training time: samples seen until each level is learnt, against P, a panel per
cell (the crossings along training of results/training_time.py).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from rhmscale.report.plot_kit import (
    CENSORED_MARKER_Y,
    P_LABEL,
    SAMPLES_LABEL,
    Inputs,
    censored_handles,
    error_bars,
    level_color,
    level_handles,
    message_figure,
    panels,
    scale_log,
    sentence,
)
from rhmscale.results.cells import SIZE

STACK = 1.3  # factor between levels' censored markers at one bound on a log axis


def runs_of(flags: np.ndarray) -> list[slice]:
    """The runs of consecutive True in flags, as slices: [F, T, T, F, T] -> [1:3, 4:5]."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flags.astype(int), [0]])))
    return [slice(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def time_to_learn(data: Inputs) -> Figure:
    """Samples seen when each level's accuracy crosses the threshold, against P, per cell."""
    options = data.result.options
    title = sentence(f"samples seen until {data.words()} reaches {options.threshold:g}")
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
                censored = group["censored"].to_numpy() == side
                # Levels censored at one bound are stacked beyond it, the way the truth lies;
                # each run of neighbouring censored sizes is one bar with one marker.
                beyond = STACK ** ((k - 1) * (1 if side == "above" else -1))
                for span in runs_of(censored):
                    rows = group.iloc[span]
                    sizes = rows[SIZE].to_numpy(float)
                    y = float(
                        rows["samples_star"].max()
                        if side == "above"
                        else rows["samples_star"].min()
                    )
                    y *= beyond
                    ax.plot(
                        sizes[[0, -1]],
                        [y, y],
                        "-",
                        color=color,
                        lw=3,
                        alpha=0.35,
                        solid_capstyle="round",
                    )
                    middle = float(np.exp(np.log(sizes[[0, -1]]).mean()))
                    ax.plot(
                        middle, y, marker, mfc="white", mec=color, ms=7, mew=1.3, gid="censored"
                    )
        scale_log(ax, y=True)
        ax.set_title(cell, fontsize=9)
    fig.supxlabel(P_LABEL)
    fig.supylabel(f"{SAMPLES_LABEL} at crossing")
    handles = level_handles(data.all_levels()) + [
        Line2D([], [], ls="none", marker="o", color="0.3", label=f"{options.ci:.0%} bootstrap CI"),
    ]
    where = {
        "below": "before the first evaluation",
        "above": "not by the last evaluation",
    }
    handles += censored_handles(on_y=True, where=where)
    handles.append(
        Line2D(
            [],
            [],
            color="0.3",
            lw=3,
            alpha=0.35,
            label="bar: the sizes P censored\n(levels stacked beyond)",
        )
    )
    fig.legend(handles=handles, loc="outside right center", fontsize=8)
    return fig
