"""Compile a pack's training step in another process while the pack trains eagerly.

Why: compiling the step of a pack of 27 tree U-Nets takes 29 s of host time on an H200
machine, during which a pack that waits for it leaves its GPU idle, while the eager step,
replayed as one CUDA graph, is captured in 0.6 s and runs at half the compiled speed
(bench/results/trainer_l3_v64_graph_vs_compiled_h200.json). Compiling on a thread of the
training process instead held the interpreter for seconds at a time and took over 45 s. So
`train.compile: auto` on a GPU starts the pack on the eager graph and runs
`python -m rhmscale.training.compile_pack`, which builds the same pack (same configs, device,
precision) and takes one compiled step: that fills torch's compile caches (inductor's FX graph
and kernel caches, shared by the processes of one machine). When it exits, the trainer
compiles its own step, which now finds every kernel in the caches (about 6 s instead of 29),
and goes on compiled. A pack that ends first never compiles: short packs did not pay for it.

A sweep worker starts the helper of the pack it is about to train before it imports torch and
sets up the runs (start_early), so that the two start-ups overlap; the pack's trainer adopts
it (for_pack: the same shape and number of slots).

This module is the helper's handle (start, poll, stop) and imports nothing of the trainer, which
adopts it; the helper's program, which builds a trainer, is compile_pack.py, above both.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rhmscale.config import RunConfig, pack_key


class CompileAhead:
    """The helper process of one pack, started with it: ready() after each step, close() once
    it ended or when the pack ends first (which stops it)."""

    def __init__(self, configs: list[RunConfig], slots: int) -> None:
        self.folder = tempfile.TemporaryDirectory(prefix="rhmscale-compile-")
        payload = Path(self.folder.name) / "pack.json"
        pack = {"configs": [c.model_dump(mode="json") for c in configs], "slots": slots}
        payload.write_text(json.dumps(pack))
        self.log_path = Path(self.folder.name) / "compile.log"
        self.started = time.perf_counter()
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "rhmscale.training.compile_pack", str(payload)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=os.environ | {"PYTHONUNBUFFERED": "1"},
            )
        self.seconds: float | None = None  # how long it took, once it ended

    def ready(self) -> bool | None:
        """None while it compiles; True once it succeeded, False if it failed."""
        code = self.process.poll()
        if code is None:
            return None
        if self.seconds is None:
            self.seconds = time.perf_counter() - self.started
        return code == 0

    def close(self, step: int | None = None) -> str:
        """Stop it if it still runs; what became of it, for the run logs (at `step`)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if step is None:
            said = "the pack ended before it used a compiled step"
        elif self.process.returncode == 0:
            said = f"compiled step from step {step} (compiled in {self.seconds:.0f} s)"
        else:
            said = (
                f"compiling the step failed ({self.tail()}); training goes on with the eager "
                "step, at about half the speed (train.compile=graph says so from the start)"
            )
        self.folder.cleanup()
        return said

    def tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError as exc:
            return f"its log could not be read: {exc}"
        return " | ".join(lines[-3:]) or f"exit code {self.process.returncode}"


_early: dict[tuple[str, int], CompileAhead] = {}  # (shape, slots) -> its helper


def start_early(configs: list[RunConfig], slots: int) -> None:
    """Start the helper of a pack that is about to train on a GPU (CUDA_VISIBLE_DEVICES set, as
    SLURM and the local executor set it for GPU tasks) with train.compile auto."""
    if configs and configs[0].train.compile == "auto" and os.environ.get("CUDA_VISIBLE_DEVICES"):
        _early[(pack_key(configs[0]), slots)] = CompileAhead(configs, slots)


def for_pack(configs: list[RunConfig], slots: int) -> CompileAhead:
    """The pack's helper: the one started early for its shape and slots, else a new one."""
    helper = _early.pop((pack_key(configs[0]), slots), None)
    close_early()  # one started for a pack that trains otherwise
    return helper or CompileAhead(configs, slots)


@atexit.register
def close_early() -> None:
    while _early:
        _early.popitem()[1].close()
