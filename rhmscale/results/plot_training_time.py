"""The figure of training time: samples seen until each level is learnt, against P, a panel per
cell (the crossings along training of training_time.py).
"""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from rhmscale.results.cells import SIZE
from rhmscale.results.plot_kit import (
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
)

STACK = 1.25  # factor between levels' censored markers at one bound on a log axis


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
    handles += censored_handles(on_y=True, where=where)
    fig.legend(handles=handles, loc="outside right center", fontsize=8)
    return fig
