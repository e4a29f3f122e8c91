"""How far apart do the step modes of one pack train? The measurement issue 35 asks for.

tests/test_training_gpu.py holds the eager step replayed as a CUDA graph to the compiled step at
atol 2e-3 over 40 steps, and on an H200 the transformer pack of two broke that bound. Whether
that is kernel non-determinism (cuBLAS picks other kernels inside a capture; the bound is then
too tight) or a bug (a stale buffer, a lost update: the curves then drift apart) shows in how
the difference grows with the steps, against the floor: the same path run twice. This script
trains the same packs (the test's small configs, more steps, several seeds; a checkpoint at
the step before the last) once per path:

    default          compiled, not graphed (the reference of every pair)
    reduce-overhead  compiled and graphed from the start
    graph            eager, graphed
    auto             graphed eager, then compiled once the helper process has filled the
                     compile caches; the pack is held at --switch-at until the helper is done
                     (left alone, a short pack ends before the helper and never switches: what
                     the test saw), so that the switch falls inside the run

each TWICE (the floor: the repeat of one path), for the transformer and the tree U-Net, packs
of 2 and 1 members, and compares the per-step losses of each member, per window of steps
(1-3, 4-10, 11-50, 51-end), and at the end each member's parameters (its last checkpoint)
and final metrics.
torch._dynamo is reset before every run; packs of one shape hit the inductor caches after
their first compilation. --budget-s skips what would not fit (the most telling first: seed 0
of every architecture and pack size, packs of 2 first); the JSON says what was skipped.

    python bench/graph_vs_compiled.py --out bench/results/graph_vs_compiled_h100.json
    python bench/graph_vs_compiled.py --steps 100 --seeds 0 --archs transformer --packs 2

Needs a CUDA GPU (without one it exits 2 and says so). The JSON (--out, rewritten after each
pack so a cut-short call leaves what it measured): device facts, the settings, every run
(seconds, states, where auto switched), every comparison (per seed: per window and member the
max |difference| and max relative difference, the first step that differs at all and the
first beyond --atol, |difference| per step and member, parameters, final metrics) and
`summary`: per (arch, members, pair of paths or repeat of one), the maxima over seeds and
members. Exit status 1 when a run did not finish.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PATHS = ("default", "reduce-overhead", "graph", "auto")
ARCHS = ("transformer", "tree_unet")
# Windows of steps (1-based, inclusive): the warm-up steps where the paths used to agree
# bitwise, the rest of the lr warm-up, the test's 40 steps, and beyond.
WINDOWS = (("1-3", 1, 3), ("4-10", 4, 10), ("11-50", 11, 50), ("51-end", 51, None))
REPEATS = 2

# The packs tests/test_training_gpu.py compares (one place for them; pytest is on the GPU
# machines too).
sys.path.insert(0, str(ROOT))  # this checkout's rhmscale and tests, installed or not
from tests.test_training_gpu import MEMBERS, SMALL, auto_held_until  # noqa: E402

NO_GPU = "graph_vs_compiled.py needs a CUDA GPU (torch.cuda.is_available() is False here)"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="the JSON report (default: only the table)")
    p.add_argument("--steps", type=int, default=300, help="training steps of every run")
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1],
        help="each is added to the members' seeds (0 and 3; seed 0 is the test's pack)",
    )
    p.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS))
    p.add_argument("--packs", type=int, nargs="+", choices=(1, 2), default=[2, 1])
    p.add_argument(
        "--paths",
        nargs="+",
        choices=(*PATHS, "off"),
        default=list(PATHS),
        help="train.compile settings compared (off: eager, not graphed)",
    )
    p.add_argument(
        "--switch-at",
        type=int,
        default=10,
        help="auto: hold the pack at this step until its compile helper is done, so that it "
        "trains compiled from the next step (0: do not hold; a short pack then never switches)",
    )
    p.add_argument("--atol", type=float, default=2e-3, help="the bound the test holds (reported)")
    p.add_argument(
        "--budget-s",
        type=float,
        default=220,
        help="skip the packs that would end past this many seconds (0: no limit)",
    )
    p.add_argument("--root", type=Path, help="keep the run folders here (default: temporary)")
    p.add_argument("--curves", action="store_true", help="also write every run's losses")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be at least 1")
    return args


def members_of(n: int, seed: int) -> list[list[str]]:
    """The first n members of the test's pack, their seeds shifted by `seed`."""
    shifted = []
    for member in MEMBERS[:n]:
        shifted.append(
            [
                f"seed={int(item.split('=')[1]) + seed}" if item.startswith("seed=") else item
                for item in member
            ]
        )
    return shifted


def num(x: float, digits: int = 3) -> float | str | None:
    """A float for the JSON, to `digits` significant digits; non-finite ones as strings."""
    if x is None:
        return None
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    return float(f"{x:.{digits}g}")


def first_step(flags: Any) -> int | None:
    """The 1-based step of the first True of a bool vector, None if none."""
    hits = flags.nonzero()
    return int(hits[0, 0]) + 1 if len(hits) else None


def compare_losses(a: Any, b: Any, atol: float) -> dict[str, Any]:
    """Per-step losses a, b (steps, members) of two runs of one pack, b the reference: per
    window and member the max |a - b| and max |a - b| / |b|; the first step that differs at
    all and the first beyond atol; |a - b| per step and member."""
    if tuple(a.shape) != tuple(b.shape) or a.numel() == 0:
        return {"error": f"loss curves of shapes {tuple(a.shape)} and {tuple(b.shape)}"}
    a, b = a.double(), b.double()
    diff = (a - b).abs()
    rel = diff / b.abs().clamp_min(1e-12)
    steps, k = diff.shape
    windows = {}
    for name, lo, hi in WINDOWS:
        hi = steps if hi is None else min(hi, steps)
        if lo > hi:
            continue
        part = slice(lo - 1, hi)
        windows[name] = {
            "steps": [lo, hi],
            "max_abs": [num(v) for v in diff[part].amax(0)],
            "max_rel": [num(v) for v in rel[part].amax(0)],
        }
    return {
        "steps": steps,
        "windows": windows,
        "max_abs": [num(v) for v in diff.amax(0)],
        "max_rel": [num(v) for v in rel.amax(0)],
        "first_diff_step": [first_step(diff[:, m] > 0) for m in range(k)],
        "first_over_atol": [first_step(diff[:, m] > atol) for m in range(k)],
        "step_abs_diff": [[num(v, 2) for v in row] for row in diff.tolist()],
    }


def load_params(run_dir: Path) -> tuple[dict[str, Any], Any]:
    """The parameters in a run's last checkpoint, and the step it was written at."""
    import torch

    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return state["params"], state.get("step")


def compare_params(dirs_a: Sequence[Path], dirs_b: Sequence[Path]) -> dict[str, Any]:
    """Per member: max |a - b| over the parameters of its last checkpoint, ||a - b|| / ||b||,
    and the step they are of."""
    max_abs, rel_norm, at = [], [], []
    try:
        for da, db in zip(dirs_a, dirs_b, strict=True):
            (pa, step_a), (pb, step_b) = load_params(da), load_params(db)
            if step_a != step_b:
                return {"error": f"checkpoints of steps {step_a} and {step_b} in {da.name}"}
            at.append(step_b if isinstance(step_b, int) else None)
            if pa.keys() != pb.keys():
                return {"error": f"parameter names differ in {da.name}"}
            top, sq, ref = 0.0, 0.0, 0.0
            for name, tb in pb.items():
                ta, tb = pa[name].double(), tb.double()
                top = max(top, float((ta - tb).abs().max()))
                sq += float(((ta - tb) ** 2).sum())
                ref += float((tb**2).sum())
            max_abs.append(num(top))
            rel_norm.append(num(math.sqrt(sq) / max(math.sqrt(ref), 1e-30)))
    except Exception as exc:  # noqa: BLE001 - a checkpoint this script cannot read: say so
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"max_abs": max_abs, "rel_norm": rel_norm, "step": at}


def final_metrics(result: dict[str, Any] | None) -> dict[str, float]:
    """val/loss and the gen/ metrics of a run's final evaluation."""
    final = (result or {}).get("final") or {}
    return {
        key: float(value)
        for key, value in final.items()
        if (key == "val/loss" or key.startswith("gen/")) and isinstance(value, int | float)
    }


def compare_metrics(a: list[dict], b: list[dict]) -> dict[str, Any]:
    """Per member: |a - b| of val/loss and the largest |a - b| among the gen/ metrics."""
    val, gen = [], []
    for ma, mb in zip(a, b, strict=True):
        both = "val/loss" in ma and "val/loss" in mb
        val.append(num(abs(ma["val/loss"] - mb["val/loss"])) if both else None)
        gens = [abs(ma[k] - mb[k]) for k in mb if k.startswith("gen/") and k in ma]
        gen.append(num(max(gens)) if gens else None)
    return {"val_loss_abs": val, "gen_max_abs": gen}


SWITCH = re.compile(r"compiled step from step (\d+)")


def auto_note(run_dir: Path) -> tuple[int | None, str | None]:
    """Where the compiled step took over, and the helper's line, from the run's log."""
    try:
        text = (run_dir / "run.log").read_text(errors="replace")
    except OSError:
        return None, None
    lines = [
        line.split(": ", 1)[-1]
        for line in text.splitlines()
        if "compiled step" in line or "compiling the step" in line
    ]
    match = SWITCH.search(text)
    return (int(match.group(1)) if match else None), (lines[-1] if lines else None)


class Bench:
    """Runs the packs, keeps their curves until their comparisons are made, and the report."""

    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args, self.root = args, root
        self.started = time.perf_counter()
        self.runs: list[dict[str, Any]] = []
        self.comparisons: list[dict[str, Any]] = []
        self.skipped: list[dict[str, Any]] = []
        self.unit_seconds: dict[tuple[str, int], list[float]] = {}
        self.failed = 0
        self.facts = facts()

    def say(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.started:7.1f} s] {message}", flush=True)

    def train(self, arch: str, n: int, seed: int, path: str, repeat: int) -> dict[str, Any]:
        """One run of the pack with train.compile=path, in a fresh folder."""
        import torch

        from rhmscale.config_io import build_config
        from rhmscale.training import execute

        steps = self.args.steps
        overrides = [f"model.arch={arch}", f"train.compile={path}", f"train.max_steps={steps}"]
        # The parameters compared are those of the last checkpoint: one at the step before the
        # last (a run that reaches max_steps may write none), and at the last where it does.
        overrides.append(f"train.checkpoint_every={max(1, steps - 1)}")
        cfgs = [build_config({}, [*SMALL, *m, *overrides]) for m in members_of(n, seed)]
        folder = self.root / f"{arch}-n{n}-seed{seed}-{path}-r{repeat}"
        dirs = [folder / c.run_id() for c in cfgs]
        torch._dynamo.reset()  # every run compiles its own step (from the caches if warm)
        gc.collect()
        torch.cuda.empty_cache()
        curve: list[Any] = []
        record: dict[str, Any] = {"arch": arch, "n": n, "seed": seed, "path": path}
        record["repeat"] = repeat
        started = time.perf_counter()
        hold, held = (self.args.switch_at if path == "auto" else 0), False
        try:
            with auto_held_until(hold) as held:
                outcomes = execute(cfgs, dirs, on_step=lambda _, losses: curve.append(losses))
            torch.cuda.synchronize()
            record["states"] = [o.state for o in outcomes]
            record["errors"] = [o.error for o in outcomes if o.error]
            results = [o.result for o in outcomes]
        except Exception as exc:  # noqa: BLE001 - recorded; the other runs go on
            record["states"], record["errors"], results = ["raised"] * n, [repr(exc)], [None] * n
        record["seconds"] = round(time.perf_counter() - started, 2)
        if path == "auto":
            record["auto_held_to"] = hold if held else None
            record["auto_switch_step"], record["auto_note"] = auto_note(dirs[0])
        losses = torch.stack(curve).float().cpu() if curve else torch.empty(0, n)
        record["steps_seen"] = len(losses)
        if len(losses):
            record["first_losses"] = [num(v, 6) for v in losses[0]]
            record["final_losses"] = [num(v, 6) for v in losses[-1]]
        if self.args.curves:
            record["losses"] = [[num(v, 7) for v in row] for row in losses.tolist()]
        if record["states"] != ["done"] * n:
            self.failed += 1
        self.runs.append(record)
        switch = record.get("auto_switch_step", "-") if path == "auto" else None
        self.say(
            f"{arch} n={n} seed={seed} {path} r{repeat}: {record['seconds']} s, "
            f"{'/'.join(record['states'])}"
            + (f", compiled from step {switch}" if path == "auto" else "")
            + (f", {record['errors']}" if record["errors"] else "")
        )
        return {"losses": losses, "dirs": dirs, "metrics": [final_metrics(r) for r in results]}

    def compare(self, arch: str, n: int, seed: int, kind: str, a: str, b: str, ra, rb) -> None:
        """Run ra (path a) against the reference rb (path b)."""
        record = {"arch": arch, "n": n, "seed": seed, "kind": kind, "a": a, "b": b}
        record |= compare_losses(ra["losses"], rb["losses"], self.args.atol)
        record["params"] = compare_params(ra["dirs"], rb["dirs"])
        if all(ra["metrics"]) and all(rb["metrics"]):
            record["final_metrics"] = compare_metrics(ra["metrics"], rb["metrics"])
        self.comparisons.append(record)

    def unit(self, arch: str, n: int, seed: int) -> None:
        """Every path twice on one pack; the pairs (first runs) and the repeats compared."""
        started = time.perf_counter()
        done = {}
        for path in self.args.paths:
            for repeat in range(REPEATS):
                done[path, repeat] = self.train(arch, n, seed, path, repeat)
        for b, a in itertools.combinations(self.args.paths, 2):
            self.compare(arch, n, seed, "pair", a, b, done[a, 0], done[b, 0])
        for path in self.args.paths:
            self.compare(arch, n, seed, "repeat", path, path, done[path, 1], done[path, 0])
        self.unit_seconds.setdefault((arch, n), []).append(time.perf_counter() - started)

    def estimate(self, arch: str, n: int) -> float:
        """Seconds a pack is expected to take: the last of its shape, else the slowest first
        pack of a shape so far (a cold compile), else nothing known."""
        if (arch, n) in self.unit_seconds:
            return self.unit_seconds[arch, n][-1]
        firsts = [times[0] for times in self.unit_seconds.values()]
        return max(firsts, default=0.0)

    def run(self) -> None:
        args = self.args
        for seed in args.seeds:
            for n in args.packs:
                for arch in args.archs:
                    elapsed = time.perf_counter() - self.started
                    expected = self.estimate(arch, n)
                    if args.budget_s and elapsed + expected > args.budget_s:
                        why = f"{elapsed:.0f} s + ~{expected:.0f} s > --budget-s {args.budget_s:g}"
                        self.skipped.append({"arch": arch, "n": n, "seed": seed, "why": why})
                        self.say(f"skipped {arch} n={n} seed={seed}: {why}")
                        continue
                    self.unit(arch, n, seed)
                    self.write(complete=False)

    def summary(self) -> list[dict[str, Any]]:
        """Per (arch, n, kind, a, b): the maxima over seeds and members."""
        rows: dict[tuple, dict[str, Any]] = {}
        for c in self.comparisons:
            key = (c["arch"], c["n"], c["kind"], c["a"], c["b"])
            row = rows.setdefault(
                key,
                {"arch": c["arch"], "n": c["n"], "kind": c["kind"], "a": c["a"], "b": c["b"]}
                | {"seeds": [], "windows": {}, "errors": []},
            )
            row["seeds"].append(c["seed"])
            if "error" in c:
                row["errors"].append(c["error"])
                continue
            for name, w in c["windows"].items():
                have = row["windows"].setdefault(name, {"max_abs": 0.0, "max_rel": 0.0})
                have["max_abs"] = peak(have["max_abs"], *w["max_abs"])
                have["max_rel"] = peak(have["max_rel"], *w["max_rel"])
            row["max_abs"] = peak(row.get("max_abs", 0.0), *c["max_abs"])
            row["max_rel"] = peak(row.get("max_rel", 0.0), *c["max_rel"])
            for field in ("first_diff_step", "first_over_atol"):
                steps = [s for s in c[field] if s is not None] + [row.get(field)]
                row[field] = min((s for s in steps if s is not None), default=None)
            params = c["params"]
            if "error" in params:
                row["errors"].append(f"params: {params['error']}")
            else:
                row["params_max_abs"] = peak(row.get("params_max_abs", 0.0), *params["max_abs"])
                row["params_rel_norm"] = peak(row.get("params_rel_norm", 0.0), *params["rel_norm"])
                row["params_step"] = params["step"][0] if params["step"] else None
            metrics = c.get("final_metrics")
            if metrics:
                row["val_loss_abs"] = peak(row.get("val_loss_abs", 0.0), *metrics["val_loss_abs"])
                row["gen_max_abs"] = peak(row.get("gen_max_abs", 0.0), *metrics["gen_max_abs"])
        return list(rows.values())

    def write(self, complete: bool) -> None:
        if not self.args.out:
            return
        from rhmscale.store.atomic import atomic_write_json

        report = self.facts | {
            "complete": complete,
            "elapsed_s": round(time.perf_counter() - self.started, 1),
            "settings": {
                key: (str(v) if isinstance(v, Path) else v) for key, v in vars(self.args).items()
            }
            | {"small": SMALL, "members": MEMBERS, "repeats": REPEATS, "windows": WINDOWS},
            "failed_runs": self.failed,
            "skipped": self.skipped,
            "summary": self.summary(),
            "runs": self.runs,
            "comparisons": self.comparisons,
        }
        atomic_write_json(self.args.out, report)

    def table(self) -> None:
        names = [name for name, *_ in WINDOWS]
        head = f"{'arch':<12}{'n':>2}  {'compared':<34}" + "".join(f"{w:>9}" for w in names)
        print(
            "\nmax |loss difference| per window of steps, over seeds and members; rel: max "
            "relative; params: max ||a-b||/||b||; first: the first step that differs"
        )
        print(f"{head}{'rel':>9}{'params':>9}{'first':>6}  seeds")
        for row in self.summary():
            what = f"{row['a']} vs {row['b']}" if row["kind"] == "pair" else f"{row['a']} twice"
            cells = [cell(row["windows"].get(w, {}).get("max_abs")) for w in names]
            print(
                f"{row['arch']:<12}{row['n']:>2}  {what:<34}{''.join(cells)}"
                f"{cell(row.get('max_rel'))}{cell(row.get('params_rel_norm'))}"
                f"{str(row.get('first_diff_step') or '-'):>6}  {row['seeds']}"
                + (f"  ({len(row['errors'])} errors)" if row["errors"] else "")
            )
        autos = [r for r in self.runs if r["path"] == "auto"]
        if autos:
            switched = sorted({str(r.get("auto_switch_step")) for r in autos})
            print(f"auto switched to the compiled step after step: {', '.join(switched)}")
        for s in self.skipped:
            print(f"skipped {s['arch']} n={s['n']} seed={s['seed']}: {s['why']}")


def peak(*values: Any) -> float | str:
    """The largest of values (None ignored); a non-finite one wins, as a string."""
    finite = []
    for v in values:
        if isinstance(v, str):
            return v
        if v is not None:
            finite.append(v)
    return max(finite, default=0.0)


def cell(value: Any) -> str:
    if value is None:
        return f"{'-':>9}"
    if isinstance(value, str):
        return f"{value:>9}"
    return f"{value:>9.1e}" if value else f"{'0':>9}"


def facts() -> dict[str, Any]:
    """The GPU, driver, torch and code this ran on."""
    import torch

    props = torch.cuda.get_device_properties(0)
    out = {
        "device": torch.cuda.get_device_name(0),
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    }
    for key, command in (
        ("driver", ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
        ("commit", ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
    ):
        try:
            out[key] = subprocess.run(
                command, capture_output=True, text=True, timeout=30, check=True
            ).stdout.split("\n")[0]
        except (OSError, subprocess.SubprocessError):
            out[key] = None
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(NO_GPU, file=sys.stderr)
        return 2
    # The auto path's helper is `python -m rhmscale.training.compile_pack`: it must find this
    # checkout as this process does.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
    )
    with contextlib.ExitStack() as stack:
        if args.root:
            args.root.mkdir(parents=True, exist_ok=True)
            root = args.root
        else:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gvc-")))
        bench = Bench(args, root)
        bench.say(
            f"{bench.facts['device']}: seeds {args.seeds} x {args.archs} x packs of "
            f"{args.packs} x {args.paths} x {REPEATS}, {args.steps} steps each"
        )
        bench.run()
        bench.write(complete=True)
        bench.table()
        bench.say(f"done; {bench.failed} run(s) not finished; report: {args.out or 'not written'}")
    return 1 if bench.failed else 0


if __name__ == "__main__":
    sys.exit(main())
