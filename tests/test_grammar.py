"""Random Hierarchy Model: rules, sampling, index coding and bottom-up parsing."""

import itertools
import json
from unittest import mock

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rhmscale.config import GrammarConfig
from rhmscale.config_io import build_grammar_config
from rhmscale.errors import UserError
from rhmscale.rhm import parse as parse_module
from rhmscale.rhm import radix
from rhmscale.rhm.grammar import Grammar


@st.composite
def small_grammars(draw, min_m: int = 1) -> Grammar:
    v = draw(st.integers(2, 8))
    s = draw(st.integers(2, 3))
    m = min(draw(st.integers(min_m, 3)), v ** (s - 1))
    L = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    return Grammar.random(v, m, s, L, seed)


def with_lookup(g: Grammar, mode: str) -> Grammar:
    """The same grammar whose tuple lookup uses `mode` (table, search or lex)."""
    limits = {"table": (2**24, 2**63), "search": (0, 2**63), "lex": (0, 0)}[mode]
    with (
        mock.patch.object(parse_module, "TABLE_MAX", limits[0]),
        mock.patch.object(parse_module, "SEARCH_MAX", limits[1]),
    ):
        other = Grammar(g.v, g.m, g.s, g.L, g.rules, g.seed)
    assert all(index.mode == mode for index in other._index)
    return other


def all_sequences(g: Grammar) -> set[tuple[int, ...]]:
    """Brute force: expand every derivation of every root."""

    def expand(symbol: int, level: int) -> list[tuple[int, ...]]:
        if level == 0:
            return [(symbol,)]
        out = []
        for production in g.rules[level - 1][symbol]:
            parts = [expand(int(child), level - 1) for child in production]
            out.extend(sum(combo, ()) for combo in itertools.product(*parts))
        return out

    derivations = [seq for root in range(g.v) for seq in expand(root, g.L)]
    sequences = set(derivations)
    assert len(sequences) == len(derivations)  # unambiguous: one derivation per sequence
    return sequences


SETTINGS = settings(max_examples=40, deadline=None)


# ----------------------------------------------------------------------------- construction
@SETTINGS
@given(small_grammars())
def test_rules_have_the_contract_shape_and_distinct_tuples(g):
    assert len(g.rules) == g.L
    for r in g.rules:
        assert r.shape == (g.v, g.m, g.s)
        assert r.min() >= 0 and r.max() < g.v
        assert len({tuple(t) for t in r.reshape(-1, g.s).tolist()}) == g.v * g.m
    assert g.seq_len == g.s**g.L
    assert g.n_sequences == g.v * g.m ** ((g.s**g.L - 1) // (g.s - 1))


def test_random_is_deterministic_in_seed_and_matches_config():
    a, b = Grammar.random(8, 4, 2, 3, seed=5), Grammar.random(8, 4, 2, 3, seed=5)
    assert a == b
    assert a != Grammar.random(8, 4, 2, 3, seed=6)
    cfg = GrammarConfig(v=8, m=4, s=2, L=3, seed=5)
    assert Grammar.from_config(cfg) == a
    assert Grammar.from_config(cfg).n_sequences == cfg.n_sequences


def test_impossible_sizes_are_user_errors():
    # Checked where sizes enter: the config (and a grammar file, below), once.
    def sizes(**kw):
        return build_grammar_config({}, [f"grammar.{k}={v}" for k, v in kw.items()])

    with pytest.raises(UserError, match=r"m=4 is larger than v\*\*\(s-1\)=3.*grammar.m"):
        sizes(v=3, m=4, s=2, L=2)
    with pytest.raises(UserError, match="grammar.s"):
        sizes(v=3, m=1, s=1, L=2)
    for bad in ({"v": 0}, {"m": 0}, {"L": 0}, {"m": -1}):
        with pytest.raises(UserError, match="greater than 0"):
            sizes(**({"v": 3, "m": 2, "s": 2, "L": 2} | bad))
    text = json.loads(Grammar.random(3, 2, 2, 2, seed=0).to_json())
    with pytest.raises(UserError, match=r"grammar file: m=4 is larger than v\*\*\(s-1\)"):
        Grammar.from_json(json.dumps(text | {"m": 4}))
    # m == v**(s-1): every tuple is a production, still allowed.
    g = Grammar.random(3, 3, 2, 2, seed=0)
    assert g.parse(g.sample(10, np.random.default_rng(0))).valid.all()


def test_json_round_trip_is_exact():
    g = Grammar.random(6, 3, 3, 2, seed=11)
    text = g.to_json()
    back = Grammar.from_json(text)
    assert back == g and back.seed == 11
    assert back.to_json() == text
    assert all(np.array_equal(a, b) for a, b in zip(back.rules, g.rules, strict=True))
    with pytest.raises(UserError, match="not valid JSON"):
        Grammar.from_json("{")
    with pytest.raises(UserError, match="not a grammar"):
        Grammar.from_json("{}")
    data = json.loads(text)
    data["rules"][0][0][1] = data["rules"][0][0][0]  # a repeated production
    with pytest.raises(UserError, match="repeat a production"):
        Grammar.from_json(json.dumps(data))


def test_huge_alphabet_uses_row_search():
    """v**s beyond int64: rules drawn as rows, lookups by lexicographic binary search."""
    g = Grammar.random(2**16, 1, 4, 2, seed=3)
    assert [index.mode for index in g._index] == ["lex", "lex"]
    x = g.sample(200, np.random.default_rng(0))
    assert g.parse(x).valid.all()
    assert np.array_equal(g.decode(g.encode(x)), x)
    x[:, 0] = (x[:, 0] + 1) % g.v  # a level-1 tuple of this grammar is almost surely invalid
    assert (g.parse(x).depth == 0).mean() > 0.9


# ----------------------------------------------------------------------------- sampling, coding
@SETTINGS
@given(small_grammars(), st.integers(0, 2**32 - 1))
def test_samples_parse_fully_valid_in_every_lookup_mode(g, seed):
    x = g.sample(64, np.random.default_rng(seed))
    assert x.shape == (64, g.seq_len) and x.dtype == np.int64
    reference = g.parse(x)
    assert reference.valid.all() and (reference.depth == g.L).all()
    for mode in ("search", "lex"):
        p = with_lookup(g, mode).parse(x)
        for k in range(g.L):
            assert np.array_equal(p.parents[k], reference.parents[k])
        assert np.array_equal(with_lookup(g, mode).encode(x), g.encode(x))


@SETTINGS
@given(small_grammars(), st.integers(0, 2**32 - 1))
def test_decode_encode_round_trip(g, seed):
    rng = np.random.default_rng(seed)
    x = g.sample(50, rng)
    codes = g.encode(x)
    assert codes.dtype == np.int64
    assert ((codes >= 0) & (codes < g.n_sequences)).all()
    assert np.array_equal(g.decode(codes), x)
    idx = rng.integers(0, g.n_sequences, size=50)
    assert np.array_equal(g.encode(g.decode(idx)), idx)
    assert np.array_equal(g.decode(idx.tolist()), g.decode(idx))  # lists of Python ints too


@SETTINGS
@given(small_grammars(), st.integers(0, 2**32 - 1), st.data())
def test_sample_distinct_is_distinct_valid_and_split_is_disjoint(g, seed, data):
    total = g.n_sequences
    n = data.draw(st.integers(0, min(total, 300)))
    P = data.draw(st.integers(0, n))
    x = g.sample_distinct(n, np.random.default_rng(seed))
    assert x.shape == (n, g.seq_len) and x.dtype == np.int64
    assert len({tuple(row) for row in x.tolist()}) == n
    assert g.parse(x).valid.all()
    train, test = x[:P], x[P:]
    assert not {tuple(r) for r in train.tolist()} & {tuple(r) for r in test.tolist()}
    # The same seed gives the same draw.
    assert np.array_equal(g.sample_distinct(n, np.random.default_rng(seed)), x)


@pytest.mark.parametrize(
    ("v", "m", "s", "L"),
    [(2, 1, 2, 1), (2, 2, 2, 2), (3, 2, 2, 2), (2, 2, 3, 2), (4, 3, 2, 2), (3, 2, 3, 1)],
)
def test_counts_match_brute_force_and_decode_enumerates_everything(v, m, s, L):
    g = Grammar.random(v, m, s, L, seed=v + m + s + L)
    brute = all_sequences(g)
    assert len(brute) == g.n_sequences
    x = g.decode(np.arange(g.n_sequences))
    decoded = {tuple(row) for row in x.tolist()}
    assert decoded == brute and len(decoded) == g.n_sequences
    assert np.array_equal(g.encode(x), np.arange(g.n_sequences))
    # n close to, and equal to, the number of sequences.
    rng = np.random.default_rng(0)
    for n in (g.n_sequences - 1, g.n_sequences):
        y = g.sample_distinct(n, rng)
        assert len({tuple(row) for row in y.tolist()}) == n
    assert {tuple(row) for row in g.sample_distinct(g.n_sequences, rng).tolist()} == brute
    with pytest.raises(UserError, match=f"has only {g.n_sequences}"):
        g.sample_distinct(g.n_sequences + 1, rng)


def test_sampling_is_uniform_over_sequences():
    g = Grammar.random(2, 2, 2, 2, seed=1)  # 2 * 2**3 = 16 sequences
    rng = np.random.default_rng(0)
    counts = np.bincount(g.encode(g.sample(32_000, rng)), minlength=16)
    assert np.abs(counts - 2000).max() < 250  # about 5.6 standard deviations
    firsts = np.array([g.encode(g.sample_distinct(3, rng))[0] for _ in range(3_200)])
    assert np.abs(np.bincount(firsts, minlength=16) - 200).max() < 80


def test_astronomically_many_sequences_use_python_ints():
    g = Grammar.random(4, 4, 2, 6, seed=2)  # 4 * 4**63 = 2**128 sequences
    assert g.n_sequences == 2**128
    x = g.sample_distinct(2_000, np.random.default_rng(0))
    assert len({tuple(row) for row in x.tolist()}) == 2_000
    assert g.parse(x).valid.all()
    codes = g.encode(x)
    assert codes.dtype == object and all(isinstance(c, int) for c in codes)
    assert np.array_equal(g.decode(codes), x)
    extremes = [0, 1, 2**64 + 12345, 2**127, g.n_sequences - 1]
    assert g.encode(g.decode(extremes)).tolist() == extremes
    with pytest.raises(ValueError, match="indices"):
        g.decode([g.n_sequences])


# ----------------------------------------------------------------------------- parsing
@SETTINGS
@given(small_grammars(), st.integers(0, 2**32 - 1), st.data())
def test_one_bad_token_breaks_exactly_its_ancestors(g, seed, data):
    assume(g.m < g.v ** (g.s - 1))  # otherwise every tuple is a production
    x = g.sample(1, np.random.default_rng(seed))
    pos = data.draw(st.integers(0, g.seq_len - 1))
    start = pos - pos % g.s
    productions = {tuple(t) for t in g.rules[0].reshape(-1, g.s).tolist()}
    bad = []
    for value in range(g.v):
        candidate = x[0, start : start + g.s].copy()
        candidate[pos - start] = value
        if tuple(candidate.tolist()) not in productions:
            bad.append(value)
    assume(bad)
    x[0, pos] = data.draw(st.sampled_from(bad))
    p = g.parse(x)
    assert p.depth[0] == 0 and not p.valid[0]
    for k in range(1, g.L + 1):
        ancestor = pos // g.s**k
        broken = np.zeros(g.s ** (g.L - k), dtype=bool)
        broken[ancestor] = True
        assert np.array_equal(p.parents[k - 1][0] == -1, broken)
        assert np.array_equal(p.tuple_valid[k - 1][0], ~broken)
        assert not p.level_ok(k)[0]
        if k == 1:
            assert p.children_valid[0].all()
        else:
            assert np.array_equal(p.children_valid[k - 1][0], ~broken)
    for mode in ("search", "lex"):
        q = with_lookup(g, mode).parse(x)
        assert all(np.array_equal(a, b) for a, b in zip(q.parents, p.parents, strict=True))


def test_mask_and_out_of_range_tokens_parse_as_invalid():
    g = Grammar.random(8, 2, 2, 3, seed=0)
    x = g.sample(6, np.random.default_rng(1))
    x[0, 3] = g.v  # the mask id
    x[1, 0] = -1
    x[2, 7] = 10**12
    x[3, :] = g.v  # fully masked
    p = g.parse(x)
    assert p.valid.tolist() == [False] * 4 + [True] * 2
    assert p.depth.tolist() == [0, 0, 0, 0, 3, 3]
    assert (p.parents[0][3] == -1).all() and (p.parents[2][:4, 0] == -1).all()
    assert p.parents[0][0, 1] == -1 and p.parents[0][0, 0] >= 0
    for dtype in (np.int8, np.int16, np.int32, np.uint8, np.uint16, np.uint64):
        y = np.clip(x, 0, 127).astype(dtype)
        assert np.array_equal(g.parse(y).depth, g.parse(np.clip(x, 0, 127)).depth)
    with pytest.raises(ValueError, match="fully grammatical"):
        g.encode(x)
    with pytest.raises(ValueError, match="shape"):
        g.parse(x[:, :5])


def test_level_ok_and_depth_on_a_partly_valid_sequence():
    g = Grammar.random(8, 2, 2, 3, seed=4)
    x = g.sample(1, np.random.default_rng(0))
    # Replace the right half by another sample's right half: levels 1 and 2 stay valid; the
    # root tuple is a production for only 16 of the 64 pairs, so one of the tries breaks it.
    rng = np.random.default_rng(1)
    for _ in range(100):
        y = x.copy()
        y[0, 4:] = g.sample(1, rng)[0, 4:]
        p = g.parse(y)
        if not p.valid[0]:
            break
    assert p.level_ok(1)[0] and p.level_ok(2)[0] and not p.level_ok(3)[0]
    assert p.depth[0] == 2
    assert p.tuple_valid[2][0, 0] == False  # noqa: E712
    assert p.children_valid[2][0, 0]
    with pytest.raises(ValueError):
        p.level_ok(0)


def test_empty_batches():
    g = Grammar.random(5, 2, 2, 2, seed=0)
    rng = np.random.default_rng(0)
    assert g.sample(0, rng).shape == (0, 4)
    assert g.sample_distinct(0, rng).shape == (0, 4)
    p = g.parse(np.zeros((0, 4), dtype=np.int64))
    assert p.valid.shape == (0,) and p.depth.shape == (0,)
    assert g.encode(np.zeros((0, 4), dtype=np.int64)).shape == (0,)


def test_distinct_draws_skip_repeats():
    """The rejection path when repeats are frequent (exact de-duplication fallback)."""
    rng = np.random.default_rng(0)
    draws = radix.distinct_below(100_000, 20_000, rng)
    assert len(np.unique(draws)) == 20_000 and draws.min() >= 0 and draws.max() < 100_000
    assert not np.array_equal(draws, np.sort(draws))  # random order, not sorted
    rows = radix.distinct_rows([3, 4], 12, rng)
    assert sorted(map(tuple, rows.tolist())) == list(itertools.product(range(3), range(4)))
