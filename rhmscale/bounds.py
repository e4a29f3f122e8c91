"""Bounds on every number a user types: config keys, spec fields and command-line options.

They sit far above any experiment here (the paper's: v <= 64, width 256, batch 256, <= 60,000
steps, 512 samples, sequences <= 729 tokens), so they only catch mistakes: a typo such as
eval.n_samples=10**9 or --n-boot 100000000 is refused before anything runs or is written, with
a message naming the key or option, instead of filling memory for hours. A config key's own
bound is its field's `le` in config.py (the key's description states it); what depends on
several keys is checked here (grammar_problem, size_problem); a command-line number's bound
is its entry in OPTIONS (cli/options.py builds the option from it: --help and
docs/reference.md state it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# The longest sequence a run may have: batch x length x width activations (and the attention
# of a transformer, length**2) beyond it do not fit a GPU; the paper's grammars are <= 729.
MAX_SEQ_LEN = 4096
# The training and held-out sets live on the device as int64 beside the model and its batch.
MAX_DATA_GIB = 16
MAX_SAMPLES_GIB = 4  # an evaluation's samples: on the device, then parsed on the host
MAX_BATCH_TOKENS = 2**22  # batch x sequence length: a batch's activations must fit a GPU
MAX_EVALS = 10_000  # eval.n_evals, and train.max_steps / eval.every
# The grammar's rules, L levels of v*m productions of s symbols: it holds them several times
# (as drawn, flat, and indexed for parsing); measured: 822 MB resident at v=m=1,024, s=2,
# L=12 (25M entries, 2.5 s to draw), so about 1 GB at this bound.
MAX_RULE_ENTRIES = 2**25
MAX_RUNS = 100_000  # runs of one sweep (its grid, --max-runs): no one submits more


@dataclass(frozen=True)
class Bound:
    """lo <= x <= hi (lo < x, x < hi where open); `why` says what the upper bound protects."""

    lo: float
    hi: float
    why: str = ""
    open_lo: bool = False
    open_hi: bool = False

    @property
    def text(self) -> str:
        """'from 50 to 100,000', 'above 0 and below 1'."""
        if self.open_lo or self.open_hi:
            low = f"above {shown(self.lo)}" if self.open_lo else f"at least {shown(self.lo)}"
            high = f"below {shown(self.hi)}" if self.open_hi else f"at most {shown(self.hi)}"
            return f"{low} and {high}"
        return f"from {shown(self.lo)} to {shown(self.hi)}"

    def holds(self, value: float) -> bool:
        above = value > self.lo if self.open_lo else value >= self.lo
        below = value < self.hi if self.open_hi else value <= self.hi
        return above and below

    def field(self) -> dict[str, float]:
        """The bound as a pydantic Field's keywords (a spec field an option sets shares it)."""
        return {"gt" if self.open_lo else "ge": self.lo, "lt" if self.open_hi else "le": self.hi}


def shown(number: float) -> str:
    """A number as a reader writes it: 100,000; 0.5; 4.73 x 10^4319 for an integer too long to
    print (Python refuses to turn one of over 4,300 digits into text)."""
    if isinstance(number, int) and abs(number) >= 10**15:
        exponent = math.floor(math.log10(abs(number)))
        mantissa = 10 ** (math.log10(abs(number)) - exponent)
        return f"{'-' if number < 0 else ''}{mantissa:.2f} x 10^{exponent}"
    if isinstance(number, float) and number.is_integer() and abs(number) < 10**15:
        number = int(number)
    return f"{number:,}" if isinstance(number, int) else f"{number:g}"


# Every numeric command-line option, by its flag; a test walks the commands for any without.
OPTIONS = {
    "--n-boot": Bound(
        50, 100_000, "bootstrap replicates: the fit's time and memory grow with them"
    ),
    "--threshold": Bound(0.0, 1.0, "an accuracy", open_lo=True, open_hi=True),
    "--target": Bound(1.0, 1000.0, "a ratio of sizes", open_lo=True),
    "--seeds": Bound(1, 100, "seeds per proposed size: each is a run"),
    "--max-runs": Bound(1, MAX_RUNS, "runs of one sweep"),
    "--samples": Bound(0, 1000, "sequences printed"),
    "--max-rules": Bound(0, 1024, "rules printed per level (grammar.v is at most 1,024)"),
    "--failures": Bound(0, MAX_RUNS, "runs printed"),
    "--runs-per-task": Bound(1, 10_000, "runs one task holds"),
    "--array-parallelism": Bound(1, MAX_RUNS, "tasks of one array"),
    "--timeout-min": Bound(1, 525_600, "one year: no cluster allows more"),
    "--cpus-per-task": Bound(1, 1024, "threads a task starts: no node has more cores"),
    "--gpus-per-task": Bound(0, 64, "no node has more GPUs"),
    "--tasks-per-gpu": Bound(1, 16, "each task holds its share of the GPU's memory"),
    "--shards-per-gpu": Bound(1, 1024, "gres.conf shard counts"),
}


def option_field(flag: str) -> dict[str, float]:
    """The pydantic Field keywords of the spec field that option `flag` sets."""
    return OPTIONS[flag].field()


def grammar_problem(v: int, m: int, s: int, L: int) -> str | None:
    """What makes a grammar too large to hold, naming its keys; None when it fits."""
    # In logs: s**L itself is a huge integer for a typo like L=10**9.
    if L * math.log(s) > math.log(MAX_SEQ_LEN) + 1e-9:
        return (
            f"sequences of s**L = {s}**{L} tokens are longer than {MAX_SEQ_LEN:,}: a batch of "
            "them would not fit on a GPU (attention and the data grow with the length); lower "
            "grammar.L or grammar.s"
        )
    entries = L * v * m * s
    if entries > MAX_RULE_ENTRIES:
        return (
            f"L x v x m x s = {L} x {v:,} x {m:,} x {s:,} = "
            f"{shown(entries)} rule entries (at most {shown(MAX_RULE_ENTRIES)}: the rules are "
            "held in memory for sampling and parsing); lower grammar.v, grammar.m or grammar.L"
        )
    return None


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
