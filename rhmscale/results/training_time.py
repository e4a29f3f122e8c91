"""Training time to learn each level: for each cell, dataset size P and level k, the samples seen
when the seed mean of the level's metric crosses the threshold along training.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rhmscale.results.cells import CELL_ORDER, SIZE, grammar_of
from rhmscale.results.crossing import bootstrap_crossing, values_by
from rhmscale.results.options import FitOptions

MAX_BOOT = 200  # replicates per crossing: there is one crossing per cell, P and level


def time_crossings(
    frame: pd.DataFrame, options: FitOptions, rng: np.random.Generator
) -> pd.DataFrame:
    """Per cell, P and level: the samples seen when the seed mean crosses the threshold.

    frame: every evaluation of every run, with a "cell" column (cells.with_cells).
    """
    records = []
    if "samples_seen" not in frame.columns:  # runs written without it (by hand): no times to fit
        return pd.DataFrame(records)
    for (cell, P), group in frame.sort_values([*CELL_ORDER, SIZE]).groupby(
        ["cell", SIZE], sort=False
    ):
        group = group[group["samples_seen"] > 0]
        for k in range(1, grammar_of(group)["L"] + 1):
            column = options.metric.format(k=k)
            if column not in group.columns:  # no run of the cell recorded this level
                continue
            seen, values = values_by(group["samples_seen"], group[column])
            if not len(seen):
                continue
            found = bootstrap_crossing(
                seen,
                values,
                options.threshold,
                n_boot=min(options.n_boot, MAX_BOOT),
                rng=rng,
                ci=options.ci,
            )
            records.append(
                {
                    "cell": cell,
                    SIZE: int(P),
                    "k": k,
                    "samples_star": float(np.exp(found.log_x)),
                    "samples_lo": float(np.exp(found.lo)),
                    "samples_hi": float(np.exp(found.hi)),
                    "censored": found.censored,
                }
            )
    return pd.DataFrame(records)
