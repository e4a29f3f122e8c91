"""PNG figures of a fitted sweep: the list of figures and writing them.

- accuracy_vs_P, collapse, p_star_vs_theory: the sample complexity (plot_sample_complexity.py);
- coherence_vs_P, coherence_vs_time: the coherence length (plot_coherence.py);
- time_to_learn: samples seen until each level is learnt (plot_training_time.py).
What they draw from and with (panels, markers, log axes) is in plot_kit.py.

Each file is written to a temporary name beside it and renamed into place. Every figure is
written even when its data is missing (a failed exponent fit, no training-time evaluations); it
then says what is missing, so the set of files, and a report's links to them, never change.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from rhmscale.report.plot_coherence import coherence_vs_p, coherence_vs_time
from rhmscale.report.plot_kit import DPI, Inputs, declutter_ticks, prepare
from rhmscale.report.plot_sample_complexity import accuracy_vs_p, collapse, p_star_vs_theory
from rhmscale.report.plot_training_time import time_to_learn
from rhmscale.results.fit import FitResult
from rhmscale.store.atomic import atomic_write

FIGURES: dict[str, Callable[[Inputs], Figure]] = {
    "accuracy_vs_P.png": accuracy_vs_p,
    "collapse.png": collapse,
    "p_star_vs_theory.png": p_star_vs_theory,
    "coherence_vs_P.png": coherence_vs_p,
    "coherence_vs_time.png": coherence_vs_time,
    "time_to_learn.png": time_to_learn,
}


def save(fig: Figure, path: Path) -> Path:
    declutter_ticks(fig)
    # Tight: the PNG holds every label even where the layout could not fit one in the figure.
    atomic_write(
        path,
        lambda handle: fig.savefig(
            handle, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.05
        ),
    )
    return path


def write_figures(frame: pd.DataFrame, result: FitResult, out_dir: Path) -> list[Path]:
    """Every figure of `FIGURES` as a PNG in out_dir; returns their paths in that order."""
    data = prepare(frame, result)
    out_dir = Path(out_dir)
    return [save(draw(data), out_dir / name) for name, draw in FIGURES.items()]
