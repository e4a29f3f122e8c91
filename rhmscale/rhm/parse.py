"""Bottom-up parsing: each level's s-tuples looked up among the productions, vectorised.

Levels: level 0 is the visible tokens (a sequence of length s**L); level-k symbols form a
sequence of length s**(L-k); the root is the single level-L symbol. The "level-k tuples" are the
consecutive s-tuples of level-(k-1) symbols; each valid one has one parent, a level-k symbol.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rhmscale.rhm.radix import uint_dtype

# A lookup table of (v+1)**s entries per level (one extra "invalid" digit) is used up to this
# size; larger alphabets fall back to binary search over the sorted production codes.
TABLE_MAX = 2**24
# Beyond this, codes would overflow int64: binary search over the rows themselves.
SEARCH_MAX = 2**63


class LevelIndex:
    """Maps level-k tuples (children with sentinel v for invalid) to productions."""

    def __init__(self, rules_k: np.ndarray, v: int, m: int, s: int):
        self.v, self.m, self.s = v, m, s
        self.sym_dtype = uint_dtype(v)
        flat = rules_k.reshape(v * m, s).astype(np.int64)
        base = v + 1  # digit v marks an invalid child, so such tuples never match
        self.table_size = base**s
        if self.table_size <= TABLE_MAX:
            self.mode = "table"
        elif self.table_size < SEARCH_MAX:
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
            digit = np.zeros(self.table_size, dtype=uint_dtype(max(m - 1, 0)))
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
