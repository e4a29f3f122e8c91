"""Phase timer of bench/sweep_breakdown.py, loaded by every Python process whose PYTHONPATH holds
this folder (Python imports `sitecustomize` at start-up). It does nothing unless
RHMSCALE_PROBE_DIR is set; then it wraps rhmscale's training functions, by name, as they are
imported, and at exit writes this process's phases to RHMSCALE_PROBE_DIR/<pid>.json as
[name, start, end] (epoch seconds; comparable across processes).

The same probe times the code before and after a change: a wrapped name that a version lacks is
skipped. Phases that end in device work are closed by a device sync, and evaluate and save are
opened by one, so the training steps queued before them count as training, not as them.
"""

from __future__ import annotations

import atexit
import functools
import importlib.abc
import json
import os
import sys
import time

PROBE_DIR = os.environ.get("RHMSCALE_PROBE_DIR")
STARTED = time.time()  # about when the interpreter started: sitecustomize runs first
EVENTS: list[list] = []

# module -> [(class, method, phase, sync)]
TARGETS = {
    "rhmscale.training.execute": [
        ("_Runs", "run", "task", False),  # one execute() call: set-up and training of its units
        ("_Runs", "set_up", "set-up", False),  # a run's folder, data, checkpoint, W&B run
        ("_Runs", "record_done", "finish", True),  # W&B finish, result.json
        # The same phases since the streaming workers (Runs: one worker's runs of a shape).
        ("Runs", "train", "task", False),
        ("Runs", "set_up", "set-up", False),
        ("Runs", "record_done", "finish", True),
    ],
    "rhmscale.training.trainer": [
        ("Trainer", "__init__", "build", True),  # stack, data on the device, optimiser
        ("Trainer", "fit", "fit", True),
        ("Trainer", "evaluate", "evaluate", True),
        ("Trainer", "save", "checkpoint", True),
    ],
    "rhmscale.training.step": [("TrainStep", "__call__", "compile", True)],
}


def sync() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn, phase: str, sync_edges: bool):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if sync_edges:
            sync()
        start = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            if sync_edges:
                sync()
            EVENTS.append([phase, start, time.time()])

    return wrapper


def first_steps(fn, warmup: int):
    """TrainStep.__call__: its first warmup + 1 calls (compilation, capture) as "compile"."""
    timed_call = timed(fn, "compile", True)

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        if getattr(self, "calls", 0) <= warmup:
            return timed_call(self, *args, **kwargs)
        return fn(self, *args, **kwargs)

    return wrapper


def patch(module) -> None:
    for cls_name, method, phase, sync_edges in TARGETS[module.__name__]:
        cls = getattr(module, cls_name, None)
        if cls is None or not hasattr(cls, method):
            continue
        fn = getattr(cls, method)
        if phase == "compile":
            wrapped = first_steps(fn, getattr(module, "WARMUP_STEPS", 3))
        else:
            wrapped = timed(fn, phase, sync_edges)
        setattr(cls, method, wrapped)


class PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in TARGETS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                exec_module = spec.loader.exec_module

                def exec_and_patch(module, exec_module=exec_module):
                    exec_module(module)
                    patch(module)

                spec.loader.exec_module = exec_and_patch
                return spec
        return None


def write() -> None:
    if not EVENTS:
        return  # not a training process (the CLI, a compile worker)
    path = os.path.join(PROBE_DIR, f"{os.getpid()}.json")
    with open(path + ".tmp", "w") as f:
        record = {
            "pid": os.getpid(),
            "argv": sys.argv,
            "started": STARTED,
            "ended": time.time(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),  # its GPUs
            "events": EVENTS,
        }
        json.dump(record, f)
    os.replace(path + ".tmp", path)


def load_the_sitecustomize_we_hide() -> None:
    """Python imports one sitecustomize: run the one this folder shadows, if any (an image's
    own may set up paths or libraries)."""
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


load_the_sitecustomize_we_hide()
if PROBE_DIR:
    sys.meta_path.insert(0, PatchOnImport())
    atexit.register(write)
