"""Throughput of the RHM grammar on CPU: sample, parse, sample_distinct (and encode).

    python bench/bench_grammar.py                      # print sequences/s
    python bench/bench_grammar.py --out bench/results/grammar_cpu.json

Times the median of several repeats at one batch size, for the grammar L=4, s=2, v=32, m=8
(sequences of 16 tokens) unless told otherwise. Runs in well under a minute.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
from timing import timed  # bench/timing.py (the script's folder is on sys.path)

from rhmscale.rhm.grammar import Grammar


def run(v: int, m: int, s: int, L: int, batch: int, repeats: int, seed: int) -> dict:
    grammar = Grammar.random(v, m, s, L, seed)
    rng = np.random.default_rng(seed)
    x = grammar.sample(batch, rng)
    assert grammar.parse(x).valid.all()
    cases = {
        "sample": lambda: grammar.sample(batch, rng),
        "parse": lambda: grammar.parse(x),
        "sample_distinct": lambda: grammar.sample_distinct(batch, rng),
        "encode": lambda: grammar.encode(x),
    }
    results = {}
    for name, fn in cases.items():
        stats = timed(fn, repeats)
        stats["sequences_per_s"] = batch / stats["median_s"]
        results[name] = stats
    return {
        "grammar": {"v": v, "m": m, "s": s, "L": L, "seed": seed, "seq_len": grammar.seq_len},
        "n_sequences": str(grammar.n_sequences),
        "batch": batch,
        "repeats": repeats,
        "results": results,
    }


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine() -> dict:
    return {
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        # Other work on the machine slows the timings down; the load says how busy it was.
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--v", type=int, default=32)
    parser.add_argument("--m", type=int, default=8)
    parser.add_argument("--s", type=int, default=2)
    parser.add_argument("--L", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1_000_000, help="sequences per call")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per operation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the numbers as JSON to this file")
    args = parser.parse_args(argv)

    report = run(args.v, args.m, args.s, args.L, args.batch, args.repeats, args.seed)
    report["machine"] = machine()
    report["date"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    g = report["grammar"]
    print(
        f"grammar v={g['v']} m={g['m']} s={g['s']} L={g['L']} (length {g['seq_len']}), "
        f"batch {args.batch}, median of {args.repeats}; "
        f"{report['machine']['cpu_model'] or report['machine']['processor']}, "
        f"{report['machine']['cpu_count']} CPUs, load {report['machine']['load_avg_1m']}"
    )
    for name, stats in report["results"].items():
        print(
            f"  {name:16s} {stats['sequences_per_s'] / 1e6:8.2f} M sequences/s"
            f"   (median {stats['median_s'] * 1e3:7.1f} ms, min {stats['min_s'] * 1e3:7.1f} ms)"
        )
    if args.out:
        write_json_atomic(args.out, report)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
