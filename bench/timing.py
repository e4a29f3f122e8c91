"""Shared helpers of the benchmark scripts (run as `python bench/<script>.py`)."""

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def timed(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    """Wall-clock seconds of `repeats` calls after one warm-up call (imports, caches)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def write_report(report: dict[str, Any], device_name: str, out: Path | None) -> None:
    """Add where and when it ran; print it, and write it atomically to `out` if given."""
    import torch

    from rhmscale.store.atomic import atomic_write_json

    report = {
        "device": device_name,
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
        **report,
    }
    if out:
        atomic_write_json(out, report)
    print(json.dumps(report, indent=1))
