"""How a sweep's wall time scales with the GPUs of one machine: the same spec with the local
executor on 1, 2 and N GPUs (CUDA_VISIBLE_DEVICES), one after the other, in one call.

    python3 bench/gpu_scaling.py paper-lite --root /tmp/scaling --out OUT [--counts 1,2,8]

For each count n it submits the spec into a fresh root (`rhmscale sweep submit SPEC
--executor local`, which waits for its workers) with CUDA_VISIBLE_DEVICES = the first n GPUs and
its own empty torch compile caches, and records: the wall time, runs done, member-steps (the
runs' final steps summed), the per-GPU efficiency wall(1) / (n wall(n)) (goal: >= 0.9), and what
bounds it: the start-up before the first pack trains, the longest pack's training (a lower bound
on any count), the seconds workers stood idle before the last one ended, each GPU's busy
fraction (nvidia-smi sampled every 0.5 s) and how many workers each GPU got (the phase probe of
bench/probe/ records each worker's CUDA_VISIBLE_DEVICES). OUT/gpu_scaling.json holds it with the
GPUs' names, memory, driver, PCI bus and `nvidia-smi topo -m`; OUT/<n>gpu-submit.log the
submissions' output. Where one call cannot hold every count (a time limit), `--previous
OLD/gpu_scaling.json` takes the counts it measured, e.g. `--counts 1` first, then
`--counts 2,8 --previous OLD/gpu_scaling.json` (the same --root: each count has its folder).

On a GPU machine without a package registry, wheels in .whl/ are installed into /tmp/site first
(as bench/device_sweep.sh does) and put on the submissions' PYTHONPATH.

Without GPUs: `--fake-gpus 5,7` stands in GPU ids (the spec must train on the CPU, e.g. `quick`
with `--submit-args "--gpus-per-task 1"`): a check of the machinery and of which worker gets
which id, not a measurement. `--dry-run` prints each count's GPUs, workers and command and
runs nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from sweep_breakdown import PROBE, is_helper, runs_of, union_length

ROOT = Path(__file__).resolve().parents[1]
GOAL = 0.9
NEEDED = ["pydantic", "submitit", "wandb", "optuna"]  # what a GPU image may lack
GPU_FIELDS = ["index", "name", "uuid", "memory.total", "driver_version", "pci.bus_id"]


def install_wheels(code: Path) -> str | None:
    """Wheels in <code>/.whl (what the machine lacks) into /tmp/site, when this Python lacks
    rhmscale's packages; the folder, or None."""
    import importlib.util

    wheels = sorted((code / ".whl").glob("*.whl"))
    if not wheels or all(importlib.util.find_spec(name) for name in NEEDED):
        return None
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
         "--no-compile", "--no-cache-dir", "--upgrade", "--target", "/tmp/site",
         *map(str, wheels)],
        check=True,
    )  # fmt: skip
    return "/tmp/site"


def nvidia_smi(*args: str) -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def gpu_facts() -> list[dict[str, str]]:
    """One dict per GPU of the machine (nvidia-smi's physical indices), [] without nvidia-smi."""
    out = nvidia_smi(f"--query-gpu={','.join(GPU_FIELDS)}", "--format=csv,noheader")
    rows = [line.split(", ") for line in (out or "").strip().splitlines()]
    return [dict(zip(GPU_FIELDS, row, strict=False)) for row in rows]


def base_gpus(facts: list[dict[str, str]], fake: str | None) -> list[str]:
    """The GPUs to measure on, in order: --fake-gpus, else CUDA_VISIBLE_DEVICES as set for this
    script, else every GPU nvidia-smi lists."""
    if fake:
        return [g.strip() for g in fake.split(",") if g.strip()]
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        from rhmscale.sweeps.gpus import visible_gpus

        return visible_gpus()
    return [fact["index"] for fact in facts]


def counts_of(text: str | None, n_gpus: int, earlier: list[dict]) -> list[int]:
    """--counts, else 1, 2 and every GPU; each at most the GPUs there are, once, in order."""
    wanted = [int(c) for c in text.split(",")] if text else [1, 2, n_gpus]
    too_many = [c for c in wanted if c > n_gpus or c < 1]
    if too_many:
        sys.exit(f"--counts {text}: {too_many} not between 1 and the {n_gpus} GPU(s) there are")
    if 1 not in wanted and not any(row["gpus"] == 1 for row in earlier):
        sys.exit(
            f"--counts {text}: add 1, the wall time every efficiency is measured against "
            "(or give --previous, a report that has it)"
        )
    return sorted(set(wanted))


def previous_rows(path: Path | None, args) -> list[dict]:
    """The rows of an earlier report of the same spec and options, marked with where from."""
    if path is None:
        return []
    report = json.loads(path.read_text())
    if (report["spec"], report["submit_args"]) != (args.spec, args.submit_args):
        sys.exit(f"--previous {path} measured {report['spec']} {report['submit_args']!r}")
    return [row | {"from": str(path)} for row in report["rows"]]


class UtilisationSampler:
    """`nvidia-smi -lms 500` in the background: GPU index -> utilisation samples (%)."""

    def __init__(self, log: Path, enabled: bool) -> None:
        self.log, self.process = log, None
        if enabled:
            query = "--query-gpu=timestamp,index,utilization.gpu,memory.used"
            with log.open("w") as sink:  # the child keeps its own handle
                self.process = subprocess.Popen(
                    ["nvidia-smi", query, "--format=csv,noheader,nounits", "-lms", "500"],
                    stdout=sink,
                    stderr=subprocess.DEVNULL,
                )

    def stop(self) -> dict[str, dict[str, float]]:
        if self.process is None:
            return {}
        self.process.terminate()
        self.process.wait()
        util: dict[str, list[float]] = {}
        memory: dict[str, float] = {}
        for line in self.log.read_text().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 4 and parts[2].replace(".", "").isdigit():
                util.setdefault(parts[1], []).append(float(parts[2]))
                memory[parts[1]] = max(memory.get(parts[1], 0.0), float(parts[3]) / 1024)
        return {
            gpu: {"busy_fraction": round(sum(u) / 100 / len(u), 3),
                  "peak_memory_gib": round(memory[gpu], 1)}
            for gpu, u in sorted(util.items())
        }  # fmt: skip


def submit_command(spec: str, root: Path, extra: list[str]) -> list[str]:
    cli = [sys.executable, "-c", "from rhmscale.cli import main; main()"]
    return [*cli, "sweep", "submit", spec, "--root", str(root), "--executor", "local", *extra]


def run_count(args, n: int, gpus: list[str], env_base: dict[str, str], out: Path) -> dict:
    """Submit the spec on the first n GPUs and wait for it; the row of the table."""
    root = args.root / f"{n}gpu"
    probe = root / "probe"
    probe.mkdir(parents=True, exist_ok=True)
    visible = ",".join(gpus[:n])
    env = dict(env_base, CUDA_VISIBLE_DEVICES=visible, RHMSCALE_PROBE_DIR=str(probe))
    # Every count compiles from empty caches, as a first sweep does (else the later counts
    # would reuse the first one's kernels and look faster than they are).
    env["TORCHINDUCTOR_CACHE_DIR"] = str(root / "inductor-cache")
    env["TRITON_CACHE_DIR"] = str(root / "triton-cache")
    log = out / f"{n}gpu-submit.log"
    sampler = UtilisationSampler(root / "nvidia-smi.csv", enabled=not args.fake_gpus)
    start = time.time()
    with log.open("w") as sink:
        process = subprocess.Popen(
            submit_command(args.spec, root, shlex.split(args.submit_args)),
            env=env, cwd=args.code, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the workers, to stop at the limit
        )  # fmt: skip
        try:
            rc = process.wait(timeout=args.limit_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)  # the workers checkpoint and end
            try:
                rc = process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                rc = process.wait()
            timed_out = True
    end = time.time()
    gpu_use = sampler.stop()
    return row_of(n, visible, root, probe, start, end, rc, timed_out) | {"gpu_use": gpu_use}


def row_of(
    n: int, visible: str, root: Path, probe: Path, start: float, end: float, rc: int, cut: bool
) -> dict:
    records = [json.loads(p.read_text()) for p in sorted(probe.glob("*.json"))]
    workers = [r for r in records if not is_helper(r)]
    fits = [(s, e) for r in workers for name, s, e in r["events"] if name == "fit"]
    sweeps = [p for p in root.iterdir() if (p / "sweep.yaml").exists()]
    runs = runs_of(sweeps[0]) if sweeps else []
    wall = end - start
    return {
        "gpus": n,
        "cuda_visible_devices": visible,
        "rc": rc,
        "timed_out": cut,
        "wall_s": round(wall, 1),
        "runs_done": len(runs),
        "member_steps": sum(r["final"]["step"] for r in runs),
        "worker_processes": len(workers),
        "workers_per_gpu": dict(Counter(r.get("cuda_visible_devices") for r in workers)),
        "startup_s": round(min(s for s, _ in fits) - start, 1) if fits else None,
        "longest_pack_s": round(max(e - s for s, e in fits), 1) if fits else None,
        "seconds_with_no_pack_training": round(wall - union_length(fits), 1),
        "worker_idle_before_end_s": round(sum(end - r["ended"] for r in workers), 1),
    }


def summarise(rows: list[dict]) -> dict:
    """Speed-up and per-GPU efficiency against one GPU; whether the goal is met; and the
    bound that stops it when it is not: start-up plus the longest pack cannot shrink with n."""
    one = next((r for r in rows if r["gpus"] == 1 and r["rc"] == 0 and not r["timed_out"]), None)
    for row in rows:
        if one is None or row["rc"] or row["timed_out"] or not row["wall_s"]:
            row["speedup"] = row["efficiency"] = None
            continue
        row["speedup"] = round(one["wall_s"] / row["wall_s"], 3)
        row["efficiency"] = round(one["wall_s"] / (row["gpus"] * row["wall_s"]), 3)
        ideal = one["wall_s"] / row["gpus"]
        floor = (row["startup_s"] or 0) + (row["longest_pack_s"] or 0)
        row["ideal_s"] = round(ideal, 1)
        row["startup_plus_longest_pack_s"] = round(floor, 1)
        # Start-up and the longest pack alone take longer than the goal allows on n GPUs.
        row["startup_and_longest_pack_exceed_goal"] = floor > ideal / GOAL
    measured = [r for r in rows if r.get("efficiency") is not None and r["gpus"] > 1]
    return {
        "goal_efficiency": GOAL,
        "meets_goal": bool(measured) and all(r["efficiency"] >= GOAL for r in measured),
    }


def torch_version() -> str:
    import torch

    return f"{torch.__version__} (CUDA {torch.version.cuda})"


def dry_run(args, counts: list[int], gpus: list[str]) -> None:
    """Each count's GPUs, workers and packs (as a submission would make them) and command."""
    from rhmscale.sweeps.dispatch import prepare
    from rhmscale.sweeps.gpus import worker_gpus
    from rhmscale.sweeps.spec import load_spec

    spec = load_spec(args.spec)
    for n in counts:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[:n])
        root = args.root / f"{n}gpu"
        prepared = prepare(spec, root, executor={"kind": "local"}, query_queue=False)
        ex, workers = prepared.executor, len(prepared.tasks)
        given = worker_gpus(workers, ex.gpus_per_task, gpus[:n]) if ex.gpus_per_task else []
        pack_of = {item["run_id"]: item.get("pack") for task in prepared.tasks for item in task}
        sizes = Counter(pack_of.values())  # workers of a shared queue each hold every pack
        packs = f", {len(sizes)} packs of {min(sizes.values())}-{max(sizes.values())} runs"
        print(f"{n} GPU(s): CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}, "
              f"{workers} worker(s){packs if ex.pack else ''}")  # fmt: skip
        print("  workers' GPUs:", [",".join(g) for g in given] or "none (no gpus_per_task)")
        print("  " + shlex.join(submit_command(args.spec, root, shlex.split(args.submit_args))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="a preset name or spec file (default executor settings)")
    parser.add_argument("--root", type=Path, required=True, help="a new folder for the runs")
    parser.add_argument("--out", type=Path, help="folder for gpu_scaling.json and the logs")
    parser.add_argument("--counts", help="GPU counts, e.g. 1,2,4 (default: 1, 2 and all)")
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout to run")
    parser.add_argument("--limit-s", type=float, default=None, help="seconds per count")
    parser.add_argument("--submit-args", default="", help="more `sweep submit` options")
    parser.add_argument("--fake-gpus", help="stand-in GPU ids on a machine without GPUs")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    parser.add_argument(
        "--previous",
        type=Path,
        help="an earlier gpu_scaling.json of this spec on this machine: its rows for the counts "
        "not run now (e.g. the 1-GPU baseline, where one call cannot hold every count)",
    )
    args = parser.parse_args()
    args.root, args.code = args.root.resolve(), args.code.resolve()
    site = install_wheels(args.code)
    sys.path[1:1] = [p for p in (site, str(args.code)) if p]  # rhmscale and its packages
    facts = [] if args.fake_gpus else gpu_facts()
    gpus = base_gpus(facts, args.fake_gpus)
    if not gpus:
        sys.exit("no GPUs: nvidia-smi lists none (--fake-gpus 0,1 checks the machinery on CPUs)")
    earlier = previous_rows(args.previous, args)
    counts = counts_of(args.counts, len(gpus), earlier)
    if args.dry_run:
        dry_run(args, counts, gpus)
        return
    used_roots = [args.root / f"{n}gpu" for n in counts if (args.root / f"{n}gpu").exists()]
    if used_roots:
        sys.exit(f"{used_roots[0]} exists: each count must start from no runs (a new --root)")
    out = (args.out or args.root).resolve()
    out.mkdir(parents=True, exist_ok=True)
    paths = [site, str(args.code), str(PROBE), os.environ.get("PYTHONPATH")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))
    env["PYTHONUNBUFFERED"] = "1"
    rows = [row for row in earlier if row["gpus"] not in counts]
    for n in counts:
        rows.append(run_count(args, n, gpus, env, out))
        print(json.dumps(rows[-1]), flush=True)
    rows.sort(key=lambda row: row["gpus"])
    used = [f for f in facts if f["index"] in gpus]
    names = Counter(f["name"] for f in used)
    report = {
        "spec": args.spec,
        "submit_args": args.submit_args,
        "machine_gpus": ", ".join(f"{k}x {name}" for name, k in names.items()) or "fake ids",
        "gpus": used or [{"index": g, "name": "fake"} for g in gpus],
        "topology": nvidia_smi("topo", "-m") if facts else None,
        "cpus": os.cpu_count(),
        "torch": torch_version(),
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    report |= summarise(rows)
    (out / "gpu_scaling.json").write_text(json.dumps(report, indent=1))
    for row in rows:
        print(f"{row['gpus']} GPU(s): {row['wall_s']} s, efficiency {row.get('efficiency')}")


if __name__ == "__main__":
    main()
