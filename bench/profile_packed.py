"""Where a packed training step spends GPU time: the top kernels of PackTrainer.train_step.

python bench/profile_packed.py --arch transformer --k 32 [--compile default]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from bench_packed import FULL, make_config  # bench/ is on sys.path when run as a script

from rhmscale.rhm.data import make_datasets
from rhmscale.store.folders import RunDir
from rhmscale.training.packed import Member, PackTrainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="transformer")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--compile", default=None)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    args.max_steps, args.device = 10_000, "auto"
    configs = [make_config(FULL, args.arch, args, seed=i) for i in range(args.k)]
    data = make_datasets(configs[0])
    with tempfile.TemporaryDirectory() as tmp:
        members = [Member(c, data, RunDir(Path(tmp) / str(i))) for i, c in enumerate(configs)]
        trainer = PackTrainer(members, compile=args.compile or False)
        for _ in range(15):
            trainer.train_step()
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        ) as prof:
            for _ in range(args.steps):
                trainer.train_step()
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    events = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in events)
    per_step = args.steps * 1e3
    print(f"wall {wall / args.steps * 1e3:.1f} ms/step, kernels {gpu_us / per_step:.1f} ms/step")
    print(events.table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=70))


if __name__ == "__main__":
    main()
