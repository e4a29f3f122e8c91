"""Coherence length against dataset size: per cell, a power law s**depth ~ prefactor * P**exponent
fitted to the seed means of the coherence length (how far generated sequences stay valid).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rhmscale.results.cells import SIZE, by_cell

# Of samples that are not copies (rhm/metrics.py): a memorising run's copies are coherent
# throughout and would show the longest coherence earliest in training.
COHERENCE = "gen/novel_coherence_length"


def coherence_fits(rows: pd.DataFrame) -> pd.DataFrame:
    """Per cell: seed-mean coherence length s**depth ~ prefactor * P**exponent.

    rows: one evaluation per run (cells.rows_at) with a "cell" column and COHERENCE.
    """
    records = []
    for cell, group in by_cell(rows):
        means = group.groupby(SIZE)[COHERENCE].mean()
        means = means[means > 0]
        record = {
            "cell": cell,
            "n_sizes": len(means),
            "exponent": np.nan,
            "prefactor": np.nan,
            "r2": np.nan,
        }
        if len(means) >= 2:
            log_p, log_c = np.log(means.index.to_numpy(float)), np.log(means.to_numpy())
            slope, intercept = np.polyfit(log_p, log_c, 1)
            residual = log_c - (slope * log_p + intercept)
            spread = np.sum((log_c - log_c.mean()) ** 2)
            record.update(
                exponent=float(slope),
                prefactor=float(np.exp(intercept)),
                r2=float(1 - np.sum(residual**2) / spread) if spread > 0 else np.nan,
            )
        records.append(record)
    return pd.DataFrame(records)
