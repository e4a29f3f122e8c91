"""Shared timing helper of the benchmark scripts (run as `python bench/<script>.py`)."""

import statistics
import time
from collections.abc import Callable


def timed(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    """Wall-clock seconds of `repeats` calls after one warm-up call (imports, caches)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}
