"""Synthetic sweeps from a known law, for ground-truth tests of the aggregator.

Level k's accuracy is a logistic curve in log P centred on the true P*_k = prefactor v m^(k+1),
plus Gaussian noise per seed; along training it also rises as a logistic in log(samples seen)
centred on a known time. Each cell gets its own randomly shifted grid of dataset sizes, as real
sweeps do, so interpolation errors do not line up with the regressors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rhmscale.config_io import build_config
from rhmscale.store.atomic import atomic_write_json
from rhmscale.store.folders import RunDir

CELLS = [(8, 2), (16, 2), (32, 2), (8, 4), (16, 4), (32, 4)]
BATCH = 64


def true_p_star(v: int, m: int, k: int, prefactor: float = 3.0) -> float:
    return prefactor * v * m ** (k + 1)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def synthetic_frame(
    rng: np.random.Generator,
    *,
    cells: list[tuple[int, int]] = CELLS,
    L: int = 3,
    seeds: int = 3,
    n_sizes: int = 8,
    **law,
) -> pd.DataFrame:
    """Rows in the shape collect() returns; the last step of each run is its final row.
    law: run_rows' keywords (width, noise, steps, time_star, prefactor, level1_factor)."""
    rows = []
    prefactor = law.get("prefactor", 3.0)
    for v, m in cells:
        lo, hi = true_p_star(v, m, 1, prefactor) / 6, true_p_star(v, m, L, prefactor) * 6
        shift = rng.uniform(0, 1)
        sizes = np.exp(
            np.linspace(np.log(lo), np.log(hi), n_sizes) + shift * np.log(hi / lo) / n_sizes
        )
        for P in np.unique(np.round(sizes).astype(int)):
            for seed in range(seeds):
                rows += run_rows(rng, v, m, int(P), seed, L=L, **law)
    return pd.DataFrame(rows)


def run_rows(
    rng: np.random.Generator,
    v: int,
    m: int,
    P: int,
    seed: int,
    *,
    L: int = 3,
    width: float = 0.6,
    noise: float = 0.04,
    steps: tuple[int, ...] = (10_000,),
    time_star: float = 2e4,
    prefactor: float = 3.0,
    level1_factor: float = 1.0,
) -> list[dict]:
    """One run's evaluation rows. level1_factor moves level 1 off the law (P*_1 times it)."""
    rows = []
    run_id = f"v{v}m{m}P{P}s{seed}"
    for step in steps:
        row = {
            "run_id": run_id,
            "step": step,
            "samples_seen": step * BATCH,
            "val/loss": 1.0,
            "final": step == max(steps),
            "grammar.v": v,
            "grammar.m": m,
            "grammar.s": 2,
            "grammar.L": L,
            "grammar.seed": 0,
            "data.P": int(P),
            "seed": seed,
            "train.batch_size": BATCH,
        }
        in_time = sigmoid((np.log(step * BATCH) - np.log(time_star)) / width)
        depth = 0.0
        for k in range(1, L + 1):
            p_star = true_p_star(v, m, k, prefactor) * (level1_factor if k == 1 else 1)
            level = sigmoid((np.log(P) - np.log(p_star)) / width)
            acc = np.clip(level * in_time + rng.normal(0, noise), 0, 1)
            # A model that does not memorise: novel samples score as all do.
            row[f"gen/acc_l{k}"] = row[f"gen/novel_acc_l{k}"] = acc
            depth += acc
        row["gen/coherence_length"] = row["gen/novel_coherence_length"] = 2.0**depth
        rows.append(row)
    return rows


def write_run_dirs(frame: pd.DataFrame, root: Path) -> list[str]:
    """Each synthetic run as a finished run directory: config, metrics and result."""
    ids = []
    for _, run in frame.groupby("run_id"):
        first = run.iloc[0]
        config = build_config(
            {},
            [
                f"grammar.v={first['grammar.v']}",
                f"grammar.m={first['grammar.m']}",
                f"grammar.L={first['grammar.L']}",
                f"data.P={first['data.P']}",
                "data.n_test=16",
                f"seed={first['seed']}",
                f"train.batch_size={BATCH}",
                f"train.max_steps={run['step'].max()}",
            ],
        )
        store = RunDir(root / "runs" / config.run_id())
        atomic_write_json(
            store.config, {"run_id": config.run_id(), "config": config.model_dump(mode="json")}
        )
        metrics = [c for c in run.columns if "/" in c or c in ("step", "samples_seen")]
        store.write_metrics(run[metrics].to_dict("records"))
        atomic_write_json(store.result, {"final": run[metrics].iloc[-1].to_dict()})
        ids.append(config.run_id())
    return ids
