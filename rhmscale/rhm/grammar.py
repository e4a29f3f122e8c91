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
from dataclasses import dataclass
from typing import Any

import numpy as np

from rhmscale.config import GrammarConfig
from rhmscale.errors import UserError

_INT64_BOUND = 2**63
# A lookup table of (v+1)**s entries per level (one extra "invalid" digit) is used up to this
# size; larger alphabets fall back to binary search over the sorted production codes.
_TABLE_MAX = 2**24
# Beyond this, codes would overflow int64: binary search over the rows themselves.
_SEARCH_MAX = 2**63
# Digit chunks converted at once must fit comfortably in int64.
_CHUNK_BOUND = 2**62
_JSON_FORMAT = "rhmscale.grammar"
_JSON_VERSION = 1


def _uint_dtype(max_value: int) -> np.dtype:
    """Smallest unsigned dtype holding 0..max_value."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)


def _digits_per_chunk(base: int) -> int:
    """Largest c with base**c <= 2**62 (base >= 2)."""
    c = 1
    while base ** (c + 1) <= _CHUNK_BOUND:
        c += 1
    return c


def _limb_sizes(base: int, count: int) -> list[int]:
    """Split `count` base-`base` digits into int64-sized limbs (digits per limb, most significant
    first); no limbs when base == 1 (every digit is 0)."""
    if base == 1 or count == 0:
        return []
    per_limb = _digits_per_chunk(base)
    sizes = [per_limb] * (count // per_limb)
    if count % per_limb:
        sizes.insert(0, count % per_limb)
    return sizes


def _to_limbs(x: np.ndarray, base: int, sizes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """x (int64 or object array of Python ints) -> (x // base**sum(sizes), limbs (n, len) int64)."""
    limbs = np.empty((len(x), len(sizes)), dtype=np.int64)
    for i in range(len(sizes) - 1, -1, -1):
        low = x % base ** sizes[i]
        x = x // base ** sizes[i]
        limbs[:, i] = low
    return x, limbs


def _from_limbs(high: np.ndarray, limbs: np.ndarray, base: int, sizes: list[int], big: bool):
    """high * base**sum(sizes) + limbs (inverse of _to_limbs); object array when `big`."""
    acc = high.astype(object) if big else high.astype(np.int64)
    for i, size in enumerate(sizes):
        low = limbs[:, i]
        acc = acc * base**size + (low.astype(object) if big else low)
    return acc


def _limbs_to_digits(
    limbs: np.ndarray, base: int, sizes: list[int], count: int, dtype: Any = np.int64
) -> np.ndarray:
    """(count, n) base-`base` digits of limbs (n, len(sizes)), most significant first."""
    digits = np.zeros((count, len(limbs)), dtype=dtype)
    row = 0
    for i, size in enumerate(sizes):
        limb = limbs[:, i]
        if base & (base - 1) == 0:  # a power of two: shifts and masks, cheaper than division
            bits = base.bit_length() - 1
            for d in range(size):
                digits[row + d] = (limb >> (bits * (size - 1 - d))) & (base - 1)
        else:
            for d in range(size - 1, -1, -1):
                limb, digits[row + d] = np.divmod(limb, base)
        row += size
    return digits


def _digits_to_limbs(rows: Any, n: int, base: int, sizes: list[int]) -> np.ndarray:
    """Inverse of _limbs_to_digits; rows: the digits as 1-D arrays, most significant first."""
    rows = iter(rows)
    limbs = np.empty((n, len(sizes)), dtype=np.int64)
    for i, size in enumerate(sizes):
        acc = np.zeros(n, dtype=np.int64)
        for _ in range(size):
            acc *= base
            acc += next(rows)
        limbs[:, i] = acc
    return limbs


def _first_occurrences(rows: np.ndarray) -> np.ndarray:
    """Sorted indices of the first occurrence of each distinct row of an int64 (n, w) array."""
    if rows.shape[1] == 1:
        key = rows[:, 0]
    else:
        key = np.zeros(len(rows), dtype=np.uint64)
        for col in range(rows.shape[1]):
            key *= np.uint64(0x9E3779B97F4A7C15)  # wraps mod 2**64
            key += rows[:, col].astype(np.uint64)
    ordered = np.sort(key)
    if not (ordered[1:] == ordered[:-1]).any():  # distinct keys: distinct rows (the usual case)
        return np.arange(len(rows))
    if rows.shape[1] == 1:
        _, first = np.unique(rows[:, 0], return_index=True)
    else:
        _, first = np.unique(rows, axis=0, return_index=True)
    first.sort()
    return first


def _distinct_rows(bounds: list[int], n: int, rng: np.random.Generator) -> np.ndarray:
    """n distinct rows, uniform without replacement over [0, b_0) x [0, b_1) x ..., in random
    order: i.i.d. uniform rows with repeats skipped (for spaces much larger than n)."""
    out = np.empty((0, len(bounds)), dtype=np.int64)
    while len(out) < n:
        need = n - len(out)
        size = need + need // 16 + 16
        draws = np.stack([rng.integers(0, b, size=size, dtype=np.int64) for b in bounds], axis=1)
        stream = np.concatenate([out, draws])
        out = stream[_first_occurrences(stream)[:n]]
    return out


def _distinct_below(N: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n distinct int64 integers drawn uniformly without replacement from [0, N < 2**63), in
    random order: a partial permutation when n is a large fraction of N, else i.i.d. draws with
    repeats skipped."""
    if max(4 * n, 1 << 16) >= N:
        return rng.permutation(N)[:n].astype(np.int64, copy=False)
    return _distinct_rows([N], n, rng)[:, 0]


class _LevelIndex:
    """Maps level-k tuples (children with sentinel v for invalid) to productions."""

    def __init__(self, rules_k: np.ndarray, v: int, m: int, s: int):
        self.v, self.m, self.s = v, m, s
        self.sym_dtype = _uint_dtype(v)
        flat = rules_k.reshape(v * m, s).astype(np.int64)
        base = v + 1  # digit v marks an invalid child, so such tuples never match
        self.table_size = base**s
        if self.table_size <= _TABLE_MAX:
            self.mode = "table"
        elif self.table_size < _SEARCH_MAX:
            self.mode = "search"
        else:
            self.mode = "lex"
        self._flat = flat
        self._parent_table: np.ndarray | None = None
        self._digit_table: np.ndarray | None = None
        if self.mode == "search":
            codes = np.zeros(v * m, dtype=np.int64)
            for i in range(s):
                codes = codes * base + flat[:, i]
            order = np.argsort(codes)
            self._codes = codes[order]
            self._order = order
        elif self.mode == "lex":
            order = np.lexsort(flat.T[::-1])
            self._rows = flat[order]
            self._order = order

    def _codes_of(self, children: np.ndarray) -> np.ndarray:
        """Base-(v+1) codes of tuples (..., s) as intp (table or search mode)."""
        base = self.v + 1
        code = children[..., 0].astype(np.intp)
        for i in range(1, self.s):
            code *= base
            code += children[..., i]
        return code

    def _tables(self) -> tuple[np.ndarray, np.ndarray]:
        """Lookup tables code -> parent (v if none) and code -> production digit j."""
        if self._parent_table is None:
            v, m = self.v, self.m
            codes = self._codes_of(self._flat)
            parent = np.full(self.table_size, v, dtype=self.sym_dtype)
            parent[codes] = np.arange(v * m) // m
            digit = np.zeros(self.table_size, dtype=_uint_dtype(max(m - 1, 0)))
            digit[codes] = np.arange(v * m) % m
            self._parent_table, self._digit_table = parent, digit
        return self._parent_table, self._digit_table

    def _positions(self, children: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(production id, found) for search and lex modes."""
        if self.mode == "search":
            code = self._codes_of(children)
            pos = np.searchsorted(self._codes, code).clip(max=len(self._codes) - 1)
            found = self._codes[pos] == code
            return self._order[pos], found
        rows = self._rows
        q = children.reshape(-1, self.s).astype(np.int64)
        lo = np.zeros(len(q), dtype=np.int64)
        hi = np.full(len(q), len(rows), dtype=np.int64)
        while True:
            active = lo < hi
            if not active.any():
                break
            mid = (lo + hi) // 2
            mid_rows = rows[np.minimum(mid, len(rows) - 1)]
            less = np.zeros(len(q), dtype=bool)
            equal = np.ones(len(q), dtype=bool)
            for i in range(self.s):
                less |= equal & (mid_rows[:, i] < q[:, i])
                equal &= mid_rows[:, i] == q[:, i]
            lo = np.where(active & less, mid + 1, lo)
            hi = np.where(active & ~less, mid, hi)
        pos = np.minimum(lo, len(rows) - 1)
        found = (rows[pos] == q).all(axis=1)
        shape = children.shape[:-1]
        return self._order[pos].reshape(shape), found.reshape(shape)

    def parents(self, children: np.ndarray) -> np.ndarray:
        """Parent symbols (sym dtype, v where invalid) of tuples (..., s)."""
        if self.mode == "table":
            return self._tables()[0].take(self._codes_of(children))
        prod, found = self._positions(children)
        parent = (prod // self.m).astype(self.sym_dtype)
        parent[~found] = self.v
        return parent

    def productions(self, children: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(parent, j) of tuples (..., s): parent symbols (v where invalid), production digits."""
        if self.mode == "table":
            parent_table, digit_table = self._tables()
            code = self._codes_of(children)
            return parent_table.take(code), digit_table.take(code)
        prod, found = self._positions(children)
        parent = (prod // self.m).astype(self.sym_dtype)
        parent[~found] = self.v
        return parent, prod % self.m


@dataclass
class Parse:
    """Bottom-up parse of N sequences. Index k-1 of each list holds level k (k = 1..L).

    parents[k-1]: int64 (N, s**(L-k)), parent symbol of each level-k tuple or -1 when the tuple
    is not a production or one of its children is -1. tuple_valid[k-1]: the tuple is a
    production. children_valid[k-1]: all s children are valid (always True at level 1).
    """

    parents: list[np.ndarray]
    tuple_valid: list[np.ndarray]
    children_valid: list[np.ndarray]

    @property
    def L(self) -> int:
        return len(self.parents)

    def level_ok(self, k: int) -> np.ndarray:
        """(N,) bool: every tuple at levels 1..k is valid (invalidity propagates upwards)."""
        if not 1 <= k <= self.L:
            raise ValueError(f"level k={k} outside 1..{self.L}")
        return self.tuple_valid[k - 1].all(axis=1)

    @property
    def depth(self) -> np.ndarray:
        """(N,) int64: the largest k with level_ok(k), 0 when a level-1 tuple is invalid."""
        n = self.parents[0].shape[0]
        depth = np.zeros(n, dtype=np.int64)
        for k in range(1, self.L + 1):
            depth += self.level_ok(k)
        return depth

    @property
    def valid(self) -> np.ndarray:
        """(N,) bool: the sequence is fully grammatical."""
        return self.parents[-1][:, 0] >= 0


class Grammar:
    """An RHM: depth L, v symbols per level, m productions per symbol, branching s."""

    def __init__(
        self, v: int, m: int, s: int, L: int, rules: list[np.ndarray], seed: int | None = None
    ):
        v, m, s, L = _check_sizes(v, m, s, L)
        if len(rules) != L:
            raise UserError(f"grammar has L={L} but {len(rules)} levels of rules")
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
            r.flags.writeable = False
            checked.append(r)
        self.v, self.m, self.s, self.L = v, m, s, L
        self.seed = None if seed is None else int(seed)
        self.rules: list[np.ndarray] = checked
        self._sym_dtype = _uint_dtype(v)
        # Flattened rules per level, indexed by production id a*m + j: (v*m, s).
        self._flat = [r.reshape(v * m, s).astype(self._sym_dtype) for r in checked]
        self._flat64 = [r.reshape(v * m, s) for r in checked]
        self._index = [_LevelIndex(r, v, m, s) for r in checked]
        self._limb_sizes = _limb_sizes(m, self.n_internal)

    # ----------------------------------------------------------------- construction
    @classmethod
    def random(cls, v: int, m: int, s: int, L: int, seed: int) -> Grammar:
        """Draw each level's v*m productions uniformly without replacement from the v**s tuples."""
        v, m, s, L = _check_sizes(v, m, s, L)
        rng = np.random.default_rng(seed)
        rules = []
        sizes = _limb_sizes(v, s)
        for _ in range(L):
            if v**s < _INT64_BOUND:
                _, limbs = _to_limbs(_distinct_below(v**s, v * m, rng), v, sizes)
                tuples = _limbs_to_digits(limbs, v, sizes, s).T
            else:
                tuples = _distinct_rows([v] * s, v * m, rng)
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
        try:
            return cls(data["v"], data["m"], data["s"], data["L"], data["rules"], data.get("seed"))
        except KeyError as exc:
            raise UserError(f"grammar file lacks the key {exc}") from None

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
        return (self.s**self.L - 1) // (self.s - 1)

    @property
    def n_sequences(self) -> int:
        """Exact number of distinct sequences (unambiguous rules: one per derivation)."""
        return self.v * self.m**self.n_internal

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
        root = rng.integers(0, self.v, size=n, dtype=_uint_dtype(self.v))
        jt = _uint_dtype(self.m)
        return self._expand(root, lambda k, shape: rng.integers(0, self.m, size=shape, dtype=jt))

    def decode(self, indices: Any) -> np.ndarray:
        """Sequences (n, s**L) int64 of indices in [0, n_sequences) (bijective mixed radix)."""
        root, limbs = _to_limbs(self._as_indices(indices), self.m, self._limb_sizes)
        return self._decode_limbs(root.astype(np.int64), limbs)

    def _decode_limbs(self, root: np.ndarray, limbs: np.ndarray) -> np.ndarray:
        digit_dtype = _uint_dtype(max(self.m - 1, 0))
        digits = _limbs_to_digits(limbs, self.m, self._limb_sizes, self.n_internal, digit_dtype)
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
        limbs = _digits_to_limbs(rows, n, self.m, self._limb_sizes)
        big = self.n_sequences >= _INT64_BOUND
        return _from_limbs(sym[:, 0], limbs, self.m, self._limb_sizes, big)

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
        sizes = self._limb_sizes
        if total < _INT64_BOUND:
            root, limbs = _to_limbs(_distinct_below(total, n, rng), self.m, sizes)
            return self._decode_limbs(root, limbs)
        # Astronomically many sequences: a uniform index is a uniform root digit and uniform
        # limbs of production digits, so draw those directly, never building Python ints.
        rows = _distinct_rows([self.v] + [self.m**size for size in sizes], n, rng)
        return self._decode_limbs(rows[:, 0], rows[:, 1:])

    # ----------------------------------------------------------------- parsing
    def parse(self, x: np.ndarray) -> Parse:
        """Parse sequences (N, s**L) bottom-up; tokens outside [0, v) are invalid."""
        sym = self._tokens(x)
        n = sym.shape[0]
        v = self.v
        parents, tuple_valid, children_valid = [], [], []
        child_ok: np.ndarray | None = None
        for k in range(1, self.L + 1):
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
            if idx.dtype == np.uint64 and idx.size and int(idx.max()) >= _INT64_BOUND:
                return self._as_indices(idx.astype(object))
            return idx.astype(np.int64)
        flat = [int(i) for i in np.asarray(indices, dtype=object).reshape(-1)]
        if flat and (min(flat) < 0 or max(flat) >= total):
            raise ValueError(f"indices must lie in [0, {total})")
        if total < _INT64_BOUND:
            return np.array(flat, dtype=np.int64)
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out


def _check_sizes(v: int, m: int, s: int, L: int) -> tuple[int, int, int, int]:
    """Validate the sizes of a grammar; returns them as Python ints."""
    for name, value in (("v", v), ("m", m), ("s", s), ("L", L)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise UserError(f"grammar.{name}={value!r} must be an integer")
    v, m, s, L = int(v), int(m), int(s), int(L)
    for name, value in (("v", v), ("m", m), ("L", L)):
        if value < 1:
            raise UserError(f"grammar.{name}={value} must be a positive integer")
    if s < 2:
        raise UserError(f"grammar.s={s} must be at least 2 (tuples of at least 2 symbols)")
    if m > v ** (s - 1):
        raise UserError(
            f"m={m} is larger than v**(s-1)={v ** (s - 1)}: the v*m productions of a level "
            "cannot all be distinct s-tuples; lower grammar.m or raise grammar.v"
        )
    return v, m, s, L
