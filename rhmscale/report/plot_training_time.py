"""The figure of training time: samples seen until each level is learnt, against P, a panel per
cell (the crossings along training of results/training_time.py).
"""

from __future__ import annotations

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
    supylabel,
)
from rhmscale.results.cells import SIZE

# A run that never crossed is drawn beyond its bound (its last evaluation, or its first), level
# k a factor STACK**k away: never on the bound itself, and levels censored at one bound apart.
STACK = 1.3
CENSORED_WORDS = {
    "above": "not learned within training\n(hollow, above the run's last evaluation)",
    "below": "learned before the first evaluation\n(hollow, below it)",
}


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
    sides, measured_any = set(), False
    for ax, cell in zip(axes, data.cells, strict=False):
        for k, group in times[times["cell"] == cell].groupby("k"):
            color = level_color(int(k))
            group = group.sort_values(SIZE)
            measured = group[group["censored"] == ""]
            measured_any |= not measured.empty
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
                if censored.empty:
                    continue
                sides.add(side)
                beyond = STACK ** (int(k) * (1 if side == "above" else -1))
                ax.plot(
                    censored[SIZE],
                    censored["samples_star"] * beyond,
                    marker,
                    ls="none",
                    mfc="none",
                    mec=color,
                    ms=7,
                    mew=1.3,
                    gid="censored",
                )
        scale_log(ax, y=True)
        ax.set_title(cell, fontsize=9)
    fig.supxlabel(P_LABEL)
    supylabel(fig, f"{SAMPLES_LABEL} at crossing")
    handles = level_handles(data.all_levels())
    if measured_any:
        label = f"{options.ci:.0%} bootstrap CI"
        handles.append(Line2D([], [], ls="none", marker="o", color="0.3", label=label))
    handles += censored_handles(sides, CENSORED_WORDS, on_y=True, mew=1.3)
    fig.legend(handles=handles, loc="outside right center", fontsize=8)
    return fig
