"""What a pack is expected to cost, so that the longest packs start first (locally and on SLURM).

A pack steps until its longest member stops, and every step trains each member on a batch of
sequences of s^L tokens; its cost is therefore

    expected_steps(its longest member) x members x batch_size x s^L     (token-samples)

Run length. With early stopping (train.early_stop_patience > 0), how long a run trains grows
with its training set: on few sequences val/loss stops improving soon (the run ends at
train.min_steps), on many it goes on improving. Measured on the paper-lite preset
(results/paper-lite/collected.csv: 189 runs, s=2 L=3 tree U-Nets, v in {16, 32, 64},
m in {2, 3, 4}, P from 8 to 20,736, patience 6 evaluations of every 500 steps, steps 2,000 to
20,000): every run with P < 558 stopped at min_steps 2,000, and some up to P = 1,240; above,
the steps grew as about P^0.8 (P = 1,024: 4,500-6,000 steps; 5,184: 11,500-12,000; 10,368:
15,000-19,500; 20,736: the cap 20,000). A least-squares fit of log(steps) against log(P) over
all 189 runs, clipped to [min_steps, max_steps] as the runs are, gives

    steps ~ 11 P^0.8, clipped to [train.min_steps, train.max_steps]

(error: 0.19 in log steps, a factor of 1.2; 93% of the runs within a factor of 1.5; rank
correlation with the measured steps 0.94). P alone predicts the steps better than
P / (v m^(L+1)) does (error 0.36 in log steps). The law is for that recipe: other evaluation
intervals or patience shift it, and for L=4 or s=3 grammars it is an extrapolation (their
longer sequences are costed per token, and their larger train.max_steps bound them). Without
early stopping a run trains train.max_steps.

Per step. A pack of 27 tree U-Nets already fills an H200 (bench/results/
trainer_l3_v16_pack_sizes_h200.json: 27 members 11,340 member-steps/s, 81 members 12,631), so a
step costs in proportion to its members and to the tokens it trains: members x batch_size x s^L.
The network's size (width, depth, architecture) is not costed: packs that differ in it are
compared per token, as if equal.
"""

from __future__ import annotations

from rhmscale.config import RunConfig

STEPS_PER_P = 11.0  # steps ~ STEPS_PER_P * P ** STEPS_EXPONENT (paper-lite's runs)
STEPS_EXPONENT = 0.8


def expected_steps(config: RunConfig) -> int:
    """Steps a run is expected to train (the model above)."""
    train = config.train
    if not train.early_stop_patience:
        return train.max_steps
    grown = STEPS_PER_P * config.data.P**STEPS_EXPONENT
    return round(min(train.max_steps, max(train.min_steps, grown)))


def pack_cost(configs: list[RunConfig]) -> float:
    """Token-samples a pack (or a lone run) is expected to train: its longest member's steps x
    members x batch size x tokens per sequence. Members share batch size and shape."""
    first = configs[0]
    tokens = first.grammar.seq_len * first.train.batch_size
    return float(max(expected_steps(c) for c in configs) * len(configs) * tokens)
