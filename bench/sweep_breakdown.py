"""Where a sweep's wall time goes, and how busy its GPU is: run a spec as a user would
(`rhmscale sweep submit SPEC`) and write the breakdown as JSON (and a timeline figure).

    python bench/sweep_breakdown.py paper-lite --root /tmp/sw --out bench/results/x.json \\
        [--code DIR] [--figure x.png] [--reference]

- wall: from the submit command's start to its return (it waits for the local workers);
- phases, summed over the worker processes (bench/probe/sitecustomize.py times them by
  name, the same way in any version of the code): process start and imports, run set-up (data,
  checkpoint, W&B run), building the pack (stack, data on the device, optimiser), compilation
  and CUDA-graph capture (the first steps), training steps, evaluations, checkpoints, finishing
  runs (W&B finish, result.json), plus the seconds with no pack training anywhere;
- GPU: utilisation sampled through NVML every 0.2 s (the share of each sample period with a
  kernel running), its mean over the wall time = the busy fraction, and the peak memory used;
- member-steps: the runs' final steps summed, and per second of wall time;
- --reference: the training-only rate of each pack shape of the sweep at its pack size
  (bench_trainer's measurement: steps only, no evaluation), and the sweep's member-steps/s as a
  share of it (weighted by the member-steps of each shape).
--code runs another checkout's rhmscale (e.g. the code before a change), with this probe.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from timing import write_report  # bench/timing.py (the script's folder is on sys.path)

PROBE = Path(__file__).resolve().parent / "probe"
PHASES = ["imports", "set-up", "build", "compile", "steps", "evaluate", "checkpoint", "finish"]


class GpuSampler(threading.Thread):
    """NVML utilisation and memory of GPU 0 every `period` s, until stop()."""

    def __init__(self, period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.period, self.samples, self.halt = period, [], threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
            self.name = pynvml.nvmlDeviceGetName(self.handle)
        except Exception as exc:  # noqa: BLE001 - no GPU or no NVML: a CPU run
            self.nvml, self.name = None, f"no NVML ({exc.__class__.__name__})"

    def run(self) -> None:
        while self.nvml is not None and not self.halt.is_set():
            util = self.nvml.nvmlDeviceGetUtilizationRates(self.handle)
            memory = self.nvml.nvmlDeviceGetMemoryInfo(self.handle)
            self.samples.append((time.time(), util.gpu, memory.used / 2**30))
            time.sleep(self.period)

    def stop(self) -> None:
        self.halt.set()
        self.join()


def submit(spec: str, root: Path, code: Path, probe_dir: Path, log: Path) -> tuple[float, float]:
    env = dict(os.environ, RHMSCALE_PROBE_DIR=str(probe_dir), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(code), str(PROBE), os.environ.get("PYTHONPATH")) if p
    )
    command = [sys.executable, "-c", "from rhmscale.cli import main; main()"]
    start = time.time()
    with open(log, "w") as out:
        rc = subprocess.run(
            [*command, "sweep", "submit", spec, "--root", str(root)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
            cwd=code,
        ).returncode
    if rc:
        sys.exit(f"sweep submit exited {rc}: see {log}")
    return start, time.time()


def overlap(a: tuple[float, float], spans: list[tuple[float, float]]) -> float:
    return sum(max(0.0, min(a[1], b) - max(a[0], s)) for s, b in spans)


def union_length(spans: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for s, e in sorted(spans):
        if e > end:
            total += e - max(s, end)
            end = e
    return total


def process_phases(record: dict) -> dict[str, float]:
    """Seconds per phase of one worker process; training steps = fit minus what ran inside."""
    spans = defaultdict(list)
    for name, s, e in record["events"]:
        spans[name].append((s, e))
    phases = {p: sum(e - s for s, e in spans[p]) for p in PHASES if p in spans}
    tasks = spans["task"]
    phases["imports"] = (min(s for s, _ in tasks) if tasks else record["ended"]) - record["started"]
    inside = sum(
        overlap(f, spans[p])
        for f in spans["fit"]
        for p in ("evaluate", "checkpoint", "compile", "finish")
    )
    phases["steps"] = sum(e - s for s, e in spans["fit"]) - inside
    phases["other"] = (record["ended"] - record["started"]) - sum(phases.values())
    return phases


def runs_of(sweep: Path) -> list[dict]:
    results = []
    for path in sorted(sweep.glob("runs/*/result.json")):
        results.append(json.loads(path.read_text()))
    return results


def reference_rates(runs: list[dict], pack_size: int) -> list[dict]:
    """bench_trainer's training-only rate of each pack shape of the sweep: a pack of its
    `pack_size` runs of largest P (W&B off), steps only (no evaluation), after warm-up."""
    import torch
    from bench_trainer import fabric_loop

    from rhmscale.config import RunConfig, pack_key
    from rhmscale.rhm.data import make_datasets
    from rhmscale.store.folders import RunDir
    from rhmscale.training.fabric import make_fabric
    from rhmscale.training.member import Member
    from rhmscale.training.trainer import Trainer

    shapes = defaultdict(list)
    for run in runs:
        # Compiled and graphed from the start: the steady rate of every version's packs.
        train = run["config"]["train"] | {"compile": "reduce-overhead"}
        tree = run["config"] | {"tracking": {"wandb": "disabled"}, "train": train}
        config = RunConfig.model_validate(tree)
        shapes[pack_key(config)].append(config)
    args = argparse.Namespace(steps=300, warmup=10, seconds=None, start_at=None)
    rows = []
    for configs in shapes.values():
        configs = sorted(configs, key=lambda c: c.data.P)[-pack_size:]
        torch._dynamo.reset()
        with tempfile.TemporaryDirectory() as tmp:
            members = [Member(c, make_datasets(c), RunDir(Path(tmp) / c.run_id())) for c in configs]
            rate = fabric_loop(Trainer(members, make_fabric(configs[0])), args)
        g = configs[0].grammar
        rows.append(
            {"v": g.v, "s": g.s, "L": g.L, "arch": configs[0].model.arch, "k": len(configs),
             "member_steps_per_s": round(rate * len(configs), 1)}
        )  # fmt: skip
        print(rows[-1], flush=True)
    return rows


PHASE_COLORS = {  # "fit" first: the phases that run inside it are drawn over it
    "fit": "tab:green",
    "set-up": "tab:orange",
    "build": "tab:brown",
    "compile": "tab:red",
    "evaluate": "tab:blue",
    "checkpoint": "tab:purple",
    "finish": "tab:gray",
}


def is_helper(record: dict) -> bool:
    argv = " ".join(record.get("argv", []))  # the helper ran as compile_ahead before compile_pack
    return "compile_pack" in argv or "compile_ahead" in argv


def figure(path: Path, t0: float, records: list[dict], samples: list, title: str) -> None:
    """One row per process (grey: alive), its phases in colour; below, GPU utilisation.
    samples: [seconds since t0, utilisation %]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = sorted(records, key=lambda r: (not is_helper(r), r["started"]))
    fig, (ax, gpu) = plt.subplots(
        2,
        1,
        figsize=(11, 2.6 + 0.4 * len(records)),
        sharex=True,
        gridspec_kw={"height_ratios": [max(2, len(records)), 2]},
    )
    for row, record in enumerate(records):
        alive = record["ended"] - record["started"]
        ax.barh(row, alive, left=record["started"] - t0, color="0.88", height=0.8)
        for name, color in PHASE_COLORS.items():
            spans = [(s - t0, e - s) for n, s, e in record["events"] if n == name]
            ax.broken_barh(spans, (row - 0.4, 0.8), color=color)
    ax.set_yticks(range(len(records)))
    ax.set_yticklabels(["compile helper" if is_helper(r) else "worker" for r in records])
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in ["0.88", *PHASE_COLORS.values()]]
    names = ["alive", "training steps", *list(PHASE_COLORS)[1:]]
    fig.legend(handles, names, ncol=8, loc="upper center", fontsize=8, frameon=False)
    ax.set_title(title, pad=8)
    gpu.plot([t for t, _ in samples], [u for _, u in samples], lw=0.8)
    gpu.set_ylim(0, 105)
    gpu.set_ylabel("GPU util %")
    gpu.set_xlabel("seconds since submit")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=120)


def replot(report_path: Path, root: Path, out: Path) -> None:
    """The figure of an earlier breakdown, from its JSON and its root's probe records."""
    report = json.loads(report_path.read_text())
    records = [json.loads(p.read_text()) for p in sorted((root / "probe").glob("*.json"))]
    # Reports before started_at: the submit returned as its last worker ended.
    t0 = report.get("started_at") or max(r["ended"] for r in records) - report["wall_s"]
    title = f"{report['label'] or report['spec']}: {report['wall_s']:.0f} s, {report['device']}"
    figure(out, t0, records, report["gpu_samples"], title)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="a preset name or spec file (--replot: a report JSON)")
    parser.add_argument("--root", type=Path, required=True, help="a new folder for the runs")
    parser.add_argument("--code", type=Path, default=Path.cwd(), help="checkout to run")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--figure", type=Path)
    parser.add_argument("--label", default="")
    parser.add_argument("--reference", action="store_true", help="training-only rates too")
    parser.add_argument("--replot", action="store_true", help="redraw the figure of a report")
    args = parser.parse_args()
    root = args.root.resolve()
    if args.replot:
        replot(Path(args.spec), root, args.figure)
        return
    probe_dir = root / "probe"
    probe_dir.mkdir(parents=True, exist_ok=True)
    sampler = GpuSampler()
    sampler.start()
    start, end = submit(args.spec, root, args.code.resolve(), probe_dir, root / "submit.log")
    sampler.stop()
    wall = end - start
    records = [json.loads(p.read_text()) for p in sorted(probe_dir.glob("*.json"))]
    helpers = [r for r in records if is_helper(r)]
    records = [r for r in records if not is_helper(r)]
    per_process = [process_phases(r) for r in records]
    totals = {p: round(sum(pp.get(p, 0.0) for pp in per_process), 2) for p in [*PHASES, "other"]}
    fits = [(s, e) for r in records for n, s, e in r["events"] if n == "fit"]
    sweeps = [p for p in root.iterdir() if (p / "sweep.yaml").exists()]
    runs = runs_of(sweeps[0])
    member_steps = sum(r["final"]["step"] for r in runs)
    window = [s for s in sampler.samples if start <= s[0] <= end]
    report = {
        "label": args.label,
        "spec": args.spec,
        "started_at": start,
        "runs_done": len(runs),
        "wall_s": round(wall, 1),
        "member_steps": member_steps,
        "member_steps_per_s": round(member_steps / wall, 1),
        "worker_processes": len(records),
        "compile_helper_processes": len(helpers),
        "compile_helper_seconds": round(sum(r["ended"] - r["started"] for r in helpers), 1),
        "phase_seconds_summed_over_workers": totals,
        "seconds_with_no_pack_training": round(wall - union_length(fits), 1),
        "gpu_busy_fraction": round(sum(s[1] for s in window) / 100 / len(window), 3)
        if window
        else None,
        "gpu_seconds_idle": round(sum(s[1] == 0 for s in window) / len(window) * wall, 1)
        if window
        else None,
        "gpu_peak_memory_gib": round(max(s[2] for s in window), 1) if window else None,
        "gpu_samples": [[round(s[0] - start, 2), s[1]] for s in window],
    }
    if args.reference:
        rates = reference_rates(runs, largest_pack(sweeps[0]))
        rate_of = {(r["v"], r["s"], r["L"], r["arch"]): r["member_steps_per_s"] for r in rates}
        training_only_s = 0.0
        for run in runs:
            c = run["config"]
            shape = (c["grammar"]["v"], c["grammar"]["s"], c["grammar"]["L"], c["model"]["arch"])
            training_only_s += run["final"]["step"] / rate_of[shape]
        report["reference"] = {
            "rates": rates,
            "training_only_s": round(training_only_s, 1),
            "end_to_end_share_of_training_only_rate": round(training_only_s / wall, 3),
        }
    name = sampler.name
    write_report(report, name if isinstance(name, str) else name.decode(), args.out)
    if args.figure:
        title = f"{args.label or args.spec}: {wall:.0f} s, {name}"
        figure(args.figure, start, records + helpers, report["gpu_samples"], title)


def largest_pack(sweep: Path) -> int:
    """The most runs that trained together, from the runs' logs."""
    found = [1]
    for log in sweep.glob("runs/*/run.log"):
        text = log.read_text()
        found += [int(n) for n in re.findall(r"training (\d+) run\(s\) from step", text)]
    return max(found)


if __name__ == "__main__":
    main()
