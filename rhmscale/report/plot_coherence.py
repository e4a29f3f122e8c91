"""Figures of the coherence length s**depth (how far generated sequences stay valid).

- coherence_vs_p: coherence length against P, with its power-law fit per cell
  (results/coherence.py);
- coherence_vs_time: coherence length along training, one line per P, one panel per cell.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from rhmscale.config import GRAMMAR_KEYS
from rhmscale.report.plot_kit import (
    CELL_MARKERS,
    DPI,
    P_LABEL,
    SAMPLES_LABEL,
    Inputs,
    cell_color,
    compact_ticks,
    error_bars,
    message_figure,
    panels,
    scale_log,
    seed_summary,
    supylabel,
    ylabel,
)
from rhmscale.results.cells import SIZE
from rhmscale.results.coherence import COHERENCE


def coherence_vs_p(data: Inputs) -> Figure:
    """Seed-mean coherence length against P per cell (seed min-max bars), power-law fits."""
    title = "Coherence length against dataset size"
    if COHERENCE not in data.rows:
        return message_figure(title, f"{COHERENCE} was not recorded")
    fits = data.result.coherence
    fits = fits.set_index("cell") if not fits.empty else fits
    fig = Figure(figsize=(8.6, 5.2), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ceilings = False
    for index, cell in enumerate(data.cells):
        color = cell_color(index, len(data.cells))
        group = data.rows[data.rows["cell"] == cell]
        summary = seed_summary(group, SIZE, COHERENCE)
        if summary.empty:
            continue
        x = summary.index.to_numpy(float)
        ceiling = saturation(group)
        if ceiling is not None:  # the most a sequence can hold: where the curve levels off
            ax.plot(x[[0, -1]], [ceiling] * 2, ":", color=color, lw=1.2, gid="saturation")
            ceilings = True
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
    ylabel(ax, "coherence length s^depth (tokens), seed mean")
    ax.set_title(data.title(f"{title}, at {data.result.options.at}"))
    handles, _ = ax.get_legend_handles_labels()
    if ceilings:
        label = "s^L: every token valid\n(where the curve saturates)"
        handles.append(Line2D([], [], ls=":", color="0.3", label=label))
    fig.legend(
        handles=handles, loc="outside right center", fontsize=8, title=FIT_WORDS, title_fontsize=8
    )
    return fig


# The fit (results/coherence.py) is a power law through every size, also those where the
# coherence length has reached s^L: the legend says what it is good for.
FIT_WORDS = (
    "seed min-max bars; line: power-law fit\n"
    "over all sizes (the curve saturates at s^L:\n"
    "the fit describes its rise only)"
)


def saturation(group) -> float | None:
    """s^L, the sequence length: the longest coherence length of the cell's grammar."""
    s, depth = GRAMMAR_KEYS["s"], GRAMMAR_KEYS["L"]
    if s not in group or depth not in group or group[[s, depth]].isna().any(axis=None):
        return None
    return float(group[s].max()) ** float(group[depth].max())


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
    supylabel(fig, "coherence length s^depth (tokens)")
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, label=P_LABEL)
    compact_ticks(bar.ax.yaxis)
    return fig
