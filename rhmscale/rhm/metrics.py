"""Metrics of generated sequences, parsed bottom-up with the grammar (names per DESIGN.md)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rhmscale.rhm.grammar import Grammar


class TrainingSetIndex:
    """Membership test of sequences in the training set (for memorisation)."""

    def __init__(self, grammar: Grammar, train: np.ndarray):
        self._grammar = grammar
        codes = grammar.encode(train)
        # int64 codes when the grammar is small enough, else Python ints in an object array.
        self._sorted = np.sort(codes) if codes.dtype != object else None
        self._set = set(codes.tolist()) if codes.dtype == object else None

    def contains(self, valid_sequences: np.ndarray) -> np.ndarray:
        """Membership of fully grammatical sequences (only those can be encoded)."""
        if len(valid_sequences) == 0:
            return np.zeros(0, dtype=bool)
        codes = self._grammar.encode(valid_sequences)
        if self._sorted is not None:
            pos = np.searchsorted(self._sorted, codes).clip(max=len(self._sorted) - 1)
            return self._sorted[pos] == codes
        return np.array([code in self._set for code in codes.tolist()], dtype=bool)


def generation_metrics(
    grammar: Grammar,
    samples: np.ndarray,
    train_index: TrainingSetIndex,
    min_novel: int = 1,
    check: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Per-level validity, coherence and memorisation of generated samples.

    A copy of a training sequence is always grammatical, so gen/acc_l{k} rises as a model
    memorises. The gen/novel_* metrics count only samples that are not copies, and when fewer
    than `min_novel` of them were generated the missing ones count as failures (depth 0): a
    model that (nearly) only copies scores (nearly) 0, it cannot look learned.

    gen/acc_l{k} and gen/novel_acc_l{k} are cumulative (valid through level k), so a level's
    curve carries every level below it; gen/tuple_acc_l{k} and gen/novel_tuple_acc_l{k} are
    per level: the fraction of level-k tuples that are productions among those whose children
    are valid (the novel one over non-copies, a missing novel sample counting as all its
    level-k tuples failed). check: Grammar.parse's.
    """
    parse = grammar.parse(samples, check)
    depth = parse.depth
    copies = np.zeros(len(samples), dtype=bool)
    copies[parse.valid] = train_index.contains(samples[parse.valid])
    novel = ~copies
    n_novel = int(novel.sum())
    counted = max(n_novel, min_novel)
    metrics: dict[str, float] = {}
    for k in range(1, grammar.L + 1):
        ok = parse.level_ok(k)
        metrics[f"gen/acc_l{k}"] = float(ok.mean())
        metrics[f"gen/novel_acc_l{k}"] = float((ok & novel).sum() / counted)
        with_valid_children = parse.children_valid[k - 1]
        tuples = parse.tuple_valid[k - 1][with_valid_children]
        metrics[f"gen/tuple_acc_l{k}"] = float(tuples.mean()) if tuples.size else float("nan")
        novel_children = with_valid_children & novel[:, None]
        n_tuples = novel_children.sum() + (counted - n_novel) * with_valid_children.shape[1]
        valid_novel = (parse.tuple_valid[k - 1] & novel_children).sum()
        metrics[f"gen/novel_tuple_acc_l{k}"] = (
            float(valid_novel / n_tuples) if n_tuples else float("nan")
        )
    length = grammar.s ** depth.astype(np.float64)
    metrics["gen/coherence_depth"] = float(depth.mean())
    metrics["gen/coherence_length"] = float(length.mean())
    missing = counted - n_novel  # count as depth 0, length s**0 = 1
    metrics["gen/novel_coherence_depth"] = float(depth[novel].sum() / counted)
    metrics["gen/novel_coherence_length"] = float((length[novel].sum() + missing) / counted)
    metrics["gen/novel_n"] = float(n_novel)
    metrics["gen/memorized_frac"] = float(copies.mean())
    metrics["gen/novel_frac"] = float((parse.valid & novel).mean())
    return metrics


def format_sequence(seq: np.ndarray, s: int) -> str:
    """Tokens grouped by level-1 tuples: '3 1 | 0 7 | ...' (readable in tables)."""
    return " | ".join(" ".join(str(int(t)) for t in seq[i : i + s]) for i in range(0, len(seq), s))
