"""How many sequences a grammar has (its size: what a training set can hold at most)."""

from __future__ import annotations


def n_internal_nodes(s: int, L: int) -> int:
    """Symbols with a production choice in a depth-L, branching-s tree: levels 1..L."""
    return (s**L - 1) // (s - 1)


def n_sequences(v: int, m: int, s: int, L: int) -> int:
    """Exact number of distinct sequences: v roots times m choices at every internal node
    (the rules are unambiguous, so every sequence has exactly one derivation)."""
    return v * m ** n_internal_nodes(s, L)
