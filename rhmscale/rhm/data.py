"""Training and held-out sets: P + n_test distinct sequences drawn at once, split in two."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rhmscale.config import RunConfig
from rhmscale.rhm.grammar import Grammar


@dataclass(frozen=True)
class Datasets:
    grammar: Grammar
    train: np.ndarray  # (P, s**L) int64, distinct sequences
    test: np.ndarray  # (n_test, s**L) int64, distinct and disjoint from train


def make_datasets(config: RunConfig) -> Datasets:
    grammar = Grammar.from_config(config.grammar)
    # The data seed mixes the run seed with the grammar seed so that two grammars with one run
    # seed do not share the same draw of sequence indices.
    rng = np.random.default_rng([config.seed, config.grammar.seed, 0xDA7A])
    sequences = grammar.sample_distinct(config.data.P + config.data.n_test, rng)
    return Datasets(grammar, sequences[: config.data.P], sequences[config.data.P :])
