"""Random Hierarchy Model (RHM): rules, sampling, enumeration by index and bottom-up parsing.

Levels: level 0 is the visible tokens (a sequence of length s**L); level-k symbols form a
sequence of length s**(L-k); the root is the single level-L symbol. The "level-k tuples" are the
consecutive s-tuples of level-(k-1) symbols; each valid one has one parent, a level-k symbol.
``rules[k-1][a, j]`` holds the s children (level-(k-1) symbols) of production j of level-k
symbol a. The v*m productions of a level are distinct s-tuples, so parsing is unambiguous.

Sequence indices: every sequence has exactly one derivation, written as a mixed-radix number
whose most significant digit is the root symbol (base v), followed by one base-m digit per
internal node (the production chosen there) in breadth-first order: the root's own production,
then the level-(L-1) symbols left to right, ..., then the level-1 symbols left to right.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from rhmscale.config import GrammarConfig
from rhmscale.config_io import validated
from rhmscale.errors import UserError
from rhmscale.rhm.parse import LevelIndex, Parse
from rhmscale.rhm.radix import (
    INT64_BOUND,
    digits_to_limbs,
    distinct_below,
    distinct_rows,
    from_limbs,
    limb_sizes,
    limbs_to_digits,
    to_limbs,
    uint_dtype,
)
from rhmscale.sequences import n_internal_nodes
from rhmscale.sequences import n_sequences as count_sequences

_JSON_FORMAT = "rhmscale.grammar"
_JSON_VERSION = 1


class Grammar:
    """An RHM: depth L, v symbols per level, m productions per symbol, branching s."""

    def __init__(
        self, v: int, m: int, s: int, L: int, rules: list[np.ndarray], seed: int | None = None
    ):
        """rules: L arrays (v, m, s) of distinct productions per level. Sizes and rules are
        checked where they enter (GrammarConfig; from_json for a file), not here."""
        checked = [np.array(r, dtype=np.int64) for r in rules]
        for r in checked:
            r.flags.writeable = False
        self.v, self.m, self.s, self.L = v, m, s, L
        self.seed = None if seed is None else int(seed)
        self.rules: list[np.ndarray] = checked
        self._sym_dtype = uint_dtype(v)
        # Flattened rules per level, indexed by production id a*m + j: (v*m, s).
        self._flat = [r.reshape(v * m, s).astype(self._sym_dtype) for r in checked]
        self._flat64 = [r.reshape(v * m, s) for r in checked]
        self._index = [LevelIndex(r, v, m, s) for r in checked]
        self._limbs = limb_sizes(m, self.n_internal)

    # ----------------------------------------------------------------- construction
    @classmethod
    def random(cls, v: int, m: int, s: int, L: int, seed: int) -> Grammar:
        """Draw each level's v*m productions uniformly without replacement from the v**s tuples."""
        rng = np.random.default_rng(seed)
        rules = []
        sizes = limb_sizes(v, s)
        for _ in range(L):
            if v**s < INT64_BOUND:
                _, limbs = to_limbs(distinct_below(v**s, v * m, rng), v, sizes)
                tuples = limbs_to_digits(limbs, v, sizes, s).T
            else:
                tuples = distinct_rows([v] * s, v * m, rng)
            rules.append(tuples.reshape(v, m, s))
        return cls(v, m, s, L, rules, seed=seed)

    @classmethod
    def from_config(cls, cfg: GrammarConfig) -> Grammar:
        return cls.random(cfg.v, cfg.m, cfg.s, cfg.L, cfg.seed)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": _JSON_FORMAT,
                "version": _JSON_VERSION,
                "v": self.v,
                "m": self.m,
                "s": self.s,
                "L": self.L,
                "seed": self.seed,
                "rules": [r.tolist() for r in self.rules],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Grammar:
        try:
            data: dict[str, Any] = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"grammar JSON is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != _JSON_FORMAT:
            raise UserError(f'not a grammar file (expected "format": "{_JSON_FORMAT}")')
        if data.get("version") != _JSON_VERSION:
            raise UserError(f"grammar file version {data.get('version')} is not supported")
        missing = [key for key in ("v", "m", "s", "L", "rules") if key not in data]
        if missing:
            raise UserError(f"grammar file lacks the key '{missing[0]}'")
        sizes = {key: data[key] for key in ("v", "m", "s", "L")}
        validated(GrammarConfig, sizes, "grammar file: ")
        rules = checked_rules(data["rules"], **sizes)
        return cls(**sizes, rules=rules, seed=data.get("seed"))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Grammar):
            return NotImplemented
        return (self.v, self.m, self.s, self.L) == (other.v, other.m, other.s, other.L) and all(
            np.array_equal(a, b) for a, b in zip(self.rules, other.rules, strict=True)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Grammar(v={self.v}, m={self.m}, s={self.s}, L={self.L}, seed={self.seed})"

    # ----------------------------------------------------------------- sizes
    @property
    def seq_len(self) -> int:
        return self.s**self.L

    @property
    def n_internal(self) -> int:
        """Symbols with a production choice: all symbols at levels 1..L."""
        return n_internal_nodes(self.s, self.L)

    @property
    def n_sequences(self) -> int:
        return count_sequences(self.v, self.m, self.s, self.L)

    # ----------------------------------------------------------------- generation
    def _expand(self, root: np.ndarray, choice: Any) -> np.ndarray:
        """Top-down expansion; choice(k, shape) gives the production digits of level-k nodes."""
        n = len(root)
        sym = root.astype(self._sym_dtype).reshape(n, 1)
        for k in range(self.L, 0, -1):
            j = choice(k, sym.shape)
            prod = sym.astype(np.intp)
            prod *= self.m
            prod += j
            # The last level gathers straight from int64 rules: the output needs no cast.
            table = self._flat[k - 1] if k > 1 else self._flat64[0]
            sym = table.take(prod, axis=0).reshape(n, self.s ** (self.L - k + 1))
        return sym.astype(np.int64, copy=False)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, s**L) int64 i.i.d. sequences: uniform root, uniform production at every node."""
        root = rng.integers(0, self.v, size=n, dtype=uint_dtype(self.v))
        jt = uint_dtype(self.m)
        return self._expand(root, lambda k, shape: rng.integers(0, self.m, size=shape, dtype=jt))

    def decode(self, indices: Any) -> np.ndarray:
        """Sequences (n, s**L) int64 of indices in [0, n_sequences) (bijective mixed radix)."""
        root, limbs = to_limbs(self._as_indices(indices), self.m, self._limbs)
        return self._decode_limbs(root.astype(np.int64), limbs)

    def _decode_limbs(self, root: np.ndarray, limbs: np.ndarray) -> np.ndarray:
        digit_dtype = uint_dtype(max(self.m - 1, 0))
        digits = limbs_to_digits(limbs, self.m, self._limbs, self.n_internal, digit_dtype)
        # Rows of `digits` in breadth-first order: level L (1 node), L-1 (s nodes), ...
        starts = {}
        row = 0
        for k in range(self.L, 0, -1):
            starts[k] = row
            row += self.s ** (self.L - k)
        return self._expand(root, lambda k, shape: digits[starts[k] : starts[k] + shape[1]].T)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Indices of fully grammatical sequences (inverse of decode).

        int64 when n_sequences < 2**63, else an object array of Python ints.
        """
        sym = self._tokens(x)
        n = sym.shape[0]
        levels = []
        for k in range(1, self.L + 1):
            children = sym.reshape(n, self.s ** (self.L - k), self.s)
            sym, j = self._index[k - 1].productions(children)
            if (sym == self.v).any():
                raise ValueError("encode needs fully grammatical sequences (parse them first)")
            levels.append(j)
        rows = (level[:, c] for level in reversed(levels) for c in range(level.shape[1]))
        limbs = digits_to_limbs(rows, n, self.m, self._limbs)
        big = self.n_sequences >= INT64_BOUND
        return from_limbs(sym[:, 0], limbs, self.m, self._limbs, big)

    def sample_distinct(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, s**L) int64 distinct sequences, a uniform random n-subset in random order.

        Any prefix and the remaining suffix of one call are disjoint uniform draws, so training
        and held-out sets come from one call split in two.
        """
        total = self.n_sequences
        if n < 0:
            raise ValueError(f"n={n} must be non-negative")
        if n > total:
            raise UserError(
                f"cannot draw {n} distinct sequences: this grammar (v={self.v}, m={self.m}, "
                f"s={self.s}, L={self.L}) has only {total}; ask for fewer (data.P + data.n_test) "
                "or enlarge the grammar (grammar.v, grammar.m, grammar.L)"
            )
        sizes = self._limbs
        if total < INT64_BOUND:
            root, limbs = to_limbs(distinct_below(total, n, rng), self.m, sizes)
            return self._decode_limbs(root, limbs)
        # Astronomically many sequences: a uniform index is a uniform root digit and uniform
        # limbs of production digits, so draw those directly, never building Python ints.
        rows = distinct_rows([self.v] + [self.m**size for size in sizes], n, rng)
        return self._decode_limbs(rows[:, 0], rows[:, 1:])

    # ----------------------------------------------------------------- parsing
    def parse(self, x: np.ndarray, check: Callable[[], None] | None = None) -> Parse:
        """Parse sequences (N, s**L) bottom-up; tokens outside [0, v) are invalid. check(),
        when given, is called before each level (an evaluation's stop request); it may raise."""
        sym = self._tokens(x)
        n = sym.shape[0]
        v = self.v
        parents, tuple_valid, children_valid = [], [], []
        child_ok: np.ndarray | None = None
        for k in range(1, self.L + 1):
            if check is not None:
                check()
            width = self.s ** (self.L - k)
            children = sym.reshape(n, width, self.s)
            if child_ok is None:
                cv = np.ones((n, width), dtype=bool)
            else:
                ok = child_ok.reshape(n, width, self.s)
                cv = ok[..., 0].copy()
                for i in range(1, self.s):
                    cv &= ok[..., i]
            sym = self._index[k - 1].parents(children)
            tv = sym != v
            p = sym.astype(np.int64)
            np.putmask(p, ~tv, -1)
            parents.append(p)
            tuple_valid.append(tv)
            children_valid.append(cv)
            child_ok = tv
        return Parse(parents, tuple_valid, children_valid)

    # ----------------------------------------------------------------- helpers
    def _tokens(self, x: Any) -> np.ndarray:
        """(N, s**L) tokens as the internal symbol dtype, v marking anything outside [0, v)."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.seq_len:
            raise ValueError(f"expected sequences of shape (N, {self.seq_len}), got {x.shape}")
        if x.dtype.kind == "i":
            # Negative values wrap to huge unsigned ones, so one minimum clips both ends.
            x = x.astype(np.int64, copy=False).view(np.uint64)
        elif x.dtype.kind == "u":
            x = x.astype(np.uint64, copy=False)
        else:
            raise TypeError(f"sequences must have an integer dtype, not {x.dtype}")
        out = np.empty(x.shape, dtype=self._sym_dtype)
        np.minimum(x, np.uint64(self.v), out=out, casting="unsafe")
        return out

    def _as_indices(self, indices: Any) -> np.ndarray:
        """1-D int64 or object (Python int) array of indices, range-checked."""
        total = self.n_sequences
        if isinstance(indices, np.ndarray) and indices.dtype.kind in "iu":
            idx = indices.reshape(-1)
            if idx.size and (idx.min() < 0 or int(idx.max()) >= total):
                raise ValueError(f"indices must lie in [0, {total})")
            if idx.dtype == np.uint64 and idx.size and int(idx.max()) >= INT64_BOUND:
                return self._as_indices(idx.astype(object))
            return idx.astype(np.int64)
        flat = [int(i) for i in np.asarray(indices, dtype=object).reshape(-1)]
        if flat and (min(flat) < 0 or max(flat) >= total):
            raise ValueError(f"indices must lie in [0, {total})")
        if total < INT64_BOUND:
            return np.array(flat, dtype=np.int64)
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out


def checked_rules(rules: Any, v: int, m: int, s: int, L: int) -> list[np.ndarray]:
    """Rules read from a file: L integer arrays (v, m, s) of distinct productions over 0..v-1."""
    if not isinstance(rules, list) or len(rules) != L:
        raise UserError(f"grammar has L={L} but its rules are not a list of {L} levels")
    checked = []
    for k, r in enumerate(rules, start=1):
        try:
            r = np.array(r, dtype=np.int64)
        except (TypeError, ValueError, OverflowError) as exc:
            raise UserError(f"rules of level {k} are not an integer array: {exc}") from None
        if r.shape != (v, m, s):
            raise UserError(f"rules of level {k} have shape {r.shape}, expected {(v, m, s)}")
        if r.size and (r.min() < 0 or r.max() >= v):
            raise UserError(f"rules of level {k} use symbols outside 0..{v - 1}")
        if len(np.unique(r.reshape(v * m, s), axis=0)) != v * m:
            raise UserError(
                f"rules of level {k} repeat a production: the v*m tuples must be distinct"
            )
        checked.append(r)
    return checked
