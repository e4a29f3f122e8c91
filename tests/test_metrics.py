"""Generation metrics on synthetic generators: copies of the training set cannot pass the
novel-sample metrics, a model that samples the grammar passes them at every level, and one
valid to level 2 only passes levels 1 and 2."""

import numpy as np
import pytest

from rhmscale.rhm.grammar import Grammar
from rhmscale.rhm.metrics import TrainingSetIndex, generation_metrics

L, N = 3, 512


@pytest.fixture
def world():
    grammar = Grammar.random(32, 2, 2, L, seed=0)  # 32 * 2**7 = 4,096 sequences of length 8
    rng = np.random.default_rng(0)
    train = grammar.sample_distinct(64, rng)
    return grammar, train, TrainingSetIndex(grammar, train), rng


def novel_acc(metrics, name="novel_acc"):
    return [metrics[f"gen/{name}_l{k}"] for k in range(1, L + 1)]


def test_a_model_that_only_copies_scores_zero(world):
    grammar, train, index, rng = world
    copies = train[rng.integers(0, len(train), N)]
    m = generation_metrics(grammar, copies, index, min_novel=32)
    assert [m[f"gen/acc_l{k}"] for k in range(1, L + 1)] == [1.0] * L  # copies are valid
    assert novel_acc(m) == novel_acc(m, "novel_tuple_acc") == [0.0] * L
    assert m["gen/memorized_frac"] == 1.0 and m["gen/novel_n"] == 0
    assert m["gen/novel_coherence_depth"] == 0.0 and m["gen/novel_coherence_length"] == 1.0


def test_a_model_that_samples_the_grammar_scores_one(world):
    grammar, _, index, rng = world
    m = generation_metrics(grammar, grammar.sample(N, rng), index, min_novel=32)
    assert novel_acc(m) == novel_acc(m, "novel_tuple_acc") == [1.0] * L
    assert m["gen/novel_coherence_depth"] == L and m["gen/novel_coherence_length"] == 2**L
    assert 0 < m["gen/memorized_frac"] < 0.05  # 64 of 4,096 sequences are training ones


def test_a_model_valid_to_level_two_only(world):
    grammar, _, index, rng = world
    valid = grammar.sample(N, rng)
    # Each sequence is two level-2 subtrees of 4 tokens; pairing subtrees of different samples
    # keeps levels 1 and 2 valid, while the level-3 tuple is a production with chance m/v.
    mixed = np.concatenate([valid[:, :4], np.roll(valid[:, 4:], 1, axis=0)], axis=1)
    m = generation_metrics(grammar, mixed, index, min_novel=32)
    first, second, third = novel_acc(m)
    assert first == second == 1.0 and third < 0.15
    assert novel_acc(m, "novel_tuple_acc")[:2] == [1.0, 1.0]
    assert novel_acc(m, "novel_tuple_acc")[2] == pytest.approx(third)  # one level-3 tuple


def test_the_per_level_metric_does_not_carry_the_levels_below(world):
    grammar, _, index, rng = world
    broken = grammar.sample(N, rng)
    # A token no production uses breaks the first level-1 tuple of every sample: nothing is
    # valid through level 2, yet the level-2 tuple of the other half is a production.
    broken[:, 0] = grammar.v
    m = generation_metrics(grammar, broken, index, min_novel=32)
    assert m["gen/novel_acc_l2"] == 0.0
    assert m["gen/novel_tuple_acc_l2"] == 1.0  # the tuples whose children are valid
    assert m["gen/novel_tuple_acc_l1"] == pytest.approx(3 / 4)  # 1 of 4 level-1 tuples broken


def test_too_few_novel_samples_count_the_missing_as_failures(world):
    grammar, train, index, rng = world
    novel = grammar.sample(200, rng)
    novel = novel[~index.contains(novel)][:10]  # 10 valid novel samples among copies
    samples = np.concatenate([train[rng.integers(0, len(train), N - 10)], novel])
    m = generation_metrics(grammar, samples, index, min_novel=32)
    assert m["gen/novel_n"] == 10
    assert novel_acc(m) == [pytest.approx(10 / 32)] * L  # not 1.0: it must not look learned
    assert novel_acc(m, "novel_tuple_acc") == [pytest.approx(10 / 32)] * L
    assert generation_metrics(grammar, samples, index, min_novel=1)["gen/novel_acc_l3"] == 1.0
