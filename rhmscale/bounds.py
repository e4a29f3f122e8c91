"""Upper bounds on every config number that sizes memory or time.

They sit far above any experiment here (the paper's: v <= 64, width 256, batch 256, <= 60,000
steps, 512 samples, sequences <= 729 tokens), so they only catch mistakes: a typo such as
eval.n_samples=10**9 is refused when the config is read, with a message naming the key, instead
of filling memory for hours. A key's own bound is its field's `le` in config.py (the key's
description states it); what depends on several keys is checked here, by size_problem.
"""

from __future__ import annotations

from typing import Any

# The longest sequence a run may have: batch x length x width activations (and the attention
# of a transformer, length**2) beyond it do not fit a GPU; the paper's grammars are <= 729.
MAX_SEQ_LEN = 4096
# The training and held-out sets live on the device as int64 beside the model and its batch.
MAX_DATA_GIB = 16
MAX_SAMPLES_GIB = 4  # an evaluation's samples: on the device, then parsed on the host
MAX_BATCH_TOKENS = 2**22  # batch x sequence length: a batch's activations must fit a GPU
MAX_EVALS = 10_000  # eval.n_evals, and train.max_steps / eval.every


def size_problem(config: Any) -> str | None:
    """What in a RunConfig exceeds a bound that depends on several keys, naming the key to
    change; None when it all fits."""
    n, data = config.grammar.seq_len, config.data
    gib = (data.P + data.n_test) * n * 8 / 2**30
    if gib > MAX_DATA_GIB:
        return (
            f"data.P + data.n_test = {data.P + data.n_test:,} sequences of {n:,} tokens take "
            f"{gib:,.1f} GiB on the device (at most {MAX_DATA_GIB}); lower data.P or the "
            "sequence length"
        )
    for key, batch in (("train", config.train.batch_size), ("eval", config.eval.batch_size)):
        if batch * n > MAX_BATCH_TOKENS:
            return (
                f"{key}.batch_size={batch:,} sequences of {n:,} tokens are {batch * n:,} tokens "
                f"a batch (at most {MAX_BATCH_TOKENS:,}); lower {key}.batch_size"
            )
    samples = config.eval.n_samples
    if (gib := samples * n * 8 / 2**30) > MAX_SAMPLES_GIB:
        return (
            f"eval.n_samples={samples:,} samples of {n:,} tokens take {gib:,.1f} GiB (at most "
            f"{MAX_SAMPLES_GIB}); lower eval.n_samples"
        )
    every, steps = config.eval.every, config.train.max_steps
    if every and steps // every > MAX_EVALS:
        return (
            f"eval.every={every:,} evaluates {steps // every:,} times in train.max_steps="
            f"{steps:,} (at most {MAX_EVALS:,} evaluations); raise eval.every"
        )
    return None
