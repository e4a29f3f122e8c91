"""Sample complexity P*_k: for each cell and level k, the dataset size above which the seed mean
of the level's metric stays above the threshold (its last upward crossing in P), with its
seed-bootstrap interval (crossing.py), beside the theory's P_k.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rhmscale.config import GRAMMAR_KEYS
from rhmscale.results.cells import SIZE, by_cell, grammar_of
from rhmscale.results.crossing import bootstrap_crossing, values_by
from rhmscale.results.options import FitOptions
from rhmscale.results.theory import Theory


def sample_complexity(
    rows: pd.DataFrame, options: FitOptions, theory: Theory, rng: np.random.Generator
) -> tuple[pd.DataFrame, np.ndarray]:
    """P*_k per cell and level, and each point's seed-bootstrap replicates of log P*_k.

    rows: one evaluation per run (cells.rows_at), with a "cell" column (cells.with_cells).
    Censored points (the curve is above the threshold at the smallest P, or below it at the
    largest) are kept, at the bound, with censored = "below" or "above".
    """
    records, replicates = [], []
    for cell, group in by_cell(rows):
        g = grammar_of(group)
        for k in range(1, g["L"] + 1):
            sizes, values = values_by(group[SIZE], group[options.metric.format(k=k)])
            if not len(sizes):
                continue
            found = bootstrap_crossing(
                sizes,
                values,
                options.threshold,
                n_boot=options.n_boot,
                rng=rng,
                ci=options.ci,
                last=True,  # learned from where the curve stays above (crossing.py)
            )
            replicates.append(found.replicates)
            predicted = float(theory({n: np.array([val]) for n, val in {**g, "k": k}.items()})[0])
            records.append(
                {
                    "cell": cell,
                    **{GRAMMAR_KEYS[n]: val for n, val in g.items()},
                    "k": k,
                    "P_star": float(np.exp(found.log_x)),
                    "P_lo": float(np.exp(found.lo)),
                    "P_hi": float(np.exp(found.hi)),
                    "censored": found.censored,
                    "P_left": found.left,  # the sizes either side of the crossing
                    "P_right": found.right,
                    "log_sd": float(np.sqrt(found.var)),
                    "n_sizes": len(sizes),
                    "n_seeds": int(np.median([len(v) for v in values])),
                    "P_theory": predicted,
                    "ratio": float(np.exp(found.log_x)) / predicted,
                }
            )
    return pd.DataFrame(records), np.array(replicates).reshape(len(records), options.n_boot)
