"""Integers as mixed-radix digits in int64 limbs, and distinct random draws, vectorised.

A sequence of the grammar is a mixed-radix number (grammar.py); with depth it outgrows int64,
so its digits are grouped into int64 "limbs" and converted limb by limb, never through Python
integers. The distinct draws give a uniform random subset without replacement in random order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

INT64_BOUND = 2**63
# Digit chunks converted at once must fit comfortably in int64.
CHUNK_BOUND = 2**62


def uint_dtype(max_value: int) -> np.dtype:
    """Smallest unsigned dtype holding 0..max_value."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)


def digits_per_chunk(base: int) -> int:
    """Largest c with base**c <= 2**62 (base >= 2)."""
    c = 1
    while base ** (c + 1) <= CHUNK_BOUND:
        c += 1
    return c


def limb_sizes(base: int, count: int) -> list[int]:
    """Split `count` base-`base` digits into int64-sized limbs (digits per limb, most significant
    first); no limbs when base == 1 (every digit is 0)."""
    if base == 1 or count == 0:
        return []
    per_limb = digits_per_chunk(base)
    sizes = [per_limb] * (count // per_limb)
    if count % per_limb:
        sizes.insert(0, count % per_limb)
    return sizes


def to_limbs(x: np.ndarray, base: int, sizes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """x (int64 or object array of Python ints) -> (x // base**sum(sizes), limbs (n, len) int64)."""
    limbs = np.empty((len(x), len(sizes)), dtype=np.int64)
    for i in range(len(sizes) - 1, -1, -1):
        low = x % base ** sizes[i]
        x = x // base ** sizes[i]
        limbs[:, i] = low
    return x, limbs


def from_limbs(high: np.ndarray, limbs: np.ndarray, base: int, sizes: list[int], big: bool):
    """high * base**sum(sizes) + limbs (inverse of to_limbs); object array when `big`."""
    acc = high.astype(object) if big else high.astype(np.int64)
    for i, size in enumerate(sizes):
        low = limbs[:, i]
        acc = acc * base**size + (low.astype(object) if big else low)
    return acc


def limbs_to_digits(
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


def digits_to_limbs(rows: Any, n: int, base: int, sizes: list[int]) -> np.ndarray:
    """Inverse of limbs_to_digits; rows: the digits as 1-D arrays, most significant first."""
    rows = iter(rows)
    limbs = np.empty((n, len(sizes)), dtype=np.int64)
    for i, size in enumerate(sizes):
        acc = np.zeros(n, dtype=np.int64)
        for _ in range(size):
            acc *= base
            acc += next(rows)
        limbs[:, i] = acc
    return limbs


def first_occurrences(rows: np.ndarray) -> np.ndarray:
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


def distinct_rows(bounds: list[int], n: int, rng: np.random.Generator) -> np.ndarray:
    """n distinct rows, uniform without replacement over [0, b_0) x [0, b_1) x ..., in random
    order: i.i.d. uniform rows with repeats skipped (for spaces much larger than n)."""
    out = np.empty((0, len(bounds)), dtype=np.int64)
    while len(out) < n:
        need = n - len(out)
        size = need + need // 16 + 16
        draws = np.stack([rng.integers(0, b, size=size, dtype=np.int64) for b in bounds], axis=1)
        stream = np.concatenate([out, draws])
        out = stream[first_occurrences(stream)[:n]]
    return out


def distinct_below(N: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n distinct int64 integers drawn uniformly without replacement from [0, N < 2**63), in
    random order: a partial permutation when n is a large fraction of N, else i.i.d. draws with
    repeats skipped."""
    if max(4 * n, 1 << 16) >= N:
        return rng.permutation(N)[:n].astype(np.int64, copy=False)
    return distinct_rows([N], n, rng)[:, 0]
