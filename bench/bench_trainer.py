"""Training speed of the one trainer: a lone run (K = 1) and packs (K = 32), per step mode.

For the default transformer (width 256, depth 4) and the tree U-Net on L=5, s=2, v=32, m=8,
batch 256 per run, bf16 on a GPU, it times training steps only (Trainer.advance: the members'
draws and one optimiser step; no evaluation, no checkpoints) after warm-up steps (compilation
and CUDA-graph capture happen there), between torch.cuda.synchronize calls:
  - K = 1 and K = 32 with train.compile off (eager), default (compiled) and reduce-overhead
    (compiled, the whole step replayed as one CUDA graph: what runs reach on a GPU once `auto`
    has compiled; graph: the eager step graphed; auto: graphed eager until the compile helper
    is done, so time it with --seconds);
  - K = 1, the last mode, driven by Lightning's Trainer (manual optimisation, one training_step per
    step) instead of our Fabric loop: what the Trainer's per-step hooks cost;
  - with --ceiling, for each K > 1: one run at batch K x 256 (compiled, graphed), the speed a
    pack of K could at best reach (the same arithmetic in one model).
Rows: steps/s of the pack, model-steps/s (K x steps/s), samples/s, runs per GPU-hour at
--max-steps (training only), peak GPU memory.

    python bench/bench_trainer.py --out bench/results/trainer_h100.json   # on a GPU
    python bench/bench_trainer.py --quick                                 # CPU smoke run
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
from timing import write_report  # bench/timing.py (the script's folder is on sys.path)

from rhmscale.config_io import build_config
from rhmscale.models import build_denoiser, count_parameters
from rhmscale.rhm.data import make_datasets
from rhmscale.store.folders import RunDir
from rhmscale.training.fabric import make_fabric
from rhmscale.training.member import Member
from rhmscale.training.trainer import Trainer

FULL = {
    "grammar": ["grammar.L=5", "grammar.s=2", "grammar.v=32", "grammar.m=8"],
    "transformer": ["model.width=256", "model.depth=4", "model.heads=4"],
    "tree_unet": ["model.width=256"],
    "batch": 256,
    "ks": [1, 32],
}
QUICK = {
    "grammar": ["grammar.L=3", "grammar.s=2", "grammar.v=8", "grammar.m=2", "data.P=256"],
    "transformer": ["model.width=32", "model.depth=2", "model.heads=2"],
    "tree_unet": ["model.width=32"],
    "batch": 16,
    "ks": [1, 4],
}


def make_trainer(
    sizes: dict, arch: str, k: int, mode: str, args, folder: Path, batch: int
) -> Trainer:
    configs = [
        build_config(
            {},
            [
                *sizes["grammar"],
                f"model.arch={arch}",
                *sizes[arch],
                f"train.batch_size={batch}",
                f"train.max_steps={args.max_steps}",
                f"train.device={args.device}",
                f"train.compile={mode}",
                "data.n_test=64",
                "tracking.wandb=disabled",
                f"seed={i}",
            ],
        )
        for i in range(k)
    ]
    data = make_datasets(configs[0])  # members' data sets do not change the speed
    for i in range(k):
        (folder / str(i)).mkdir()
    members = [Member(c, data, RunDir(folder / str(i))) for i, c in enumerate(configs)]
    return Trainer(members, make_fabric(configs[0]))


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def fabric_loop(trainer: Trainer, args) -> float:
    """Steps/s of our loop: `--steps` steps, or as many as fit in `--seconds` from `--start-at`
    (an epoch time: processes started together time the same window, sharing the GPU)."""
    for _ in range(args.warmup):
        trainer.advance()
    sync()
    if args.start_at:
        time.sleep(max(0.0, args.start_at - time.time()))
    start, steps = time.perf_counter(), 0
    trainer.series = []  # (seconds, steps) about every second of a --seconds window
    while steps < args.steps if not args.seconds else time.perf_counter() - start < args.seconds:
        for _ in range(10):
            trainer.advance()
        steps += 10
        if args.seconds:
            sync()
            now = time.perf_counter() - start
            if not trainer.series or now - trainer.series[-1][0] >= 1.0:
                trainer.series.append((round(now, 2), steps))
    sync()
    return steps / (time.perf_counter() - start)


def eval_seconds(trainer: Trainer, repeats: int = 3) -> dict[str, float]:
    """Median seconds of one evaluation of the pack (no W&B): sampling and val/loss on the
    device, then the whole evaluation with each member's record (metrics, metrics.parquet)."""
    from rhmscale.training.evaluation import eval_generators, sample_and_score, val_generators

    configs = [m.config for m in trainer.slots]

    def device_part() -> None:
        with trainer.fabric.autocast():
            samples, _ = sample_and_score(
                trainer.diffusion, trainer.stack, trainer.config, trainer.test_data,
                eval_generators(configs, trainer.steps.tolist(), trainer.device),
                val_generators(configs, trainer.device),
            )  # fmt: skip
        samples.cpu()

    def whole() -> None:
        for m in trainer.slots:
            m.history.clear()
        trainer.loss_counts[:] = 1  # as if a step had run since the last evaluation
        trainer.snapshot(list(range(trainer.k)))
        trainer.evaluate(None)
        failed = [m.error for m in trainer.slots if m.error is not None]
        if failed:
            raise failed[0]

    times = {}
    for name, fn in (("eval_device_s", device_part), ("eval_s", whole)):
        fn()
        runs = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            runs.append(time.perf_counter() - start)
        times[name] = sorted(runs)[len(runs) // 2]
    return times


def lightning_trainer_loop(trainer: Trainer, args) -> float:
    """Steps/s of the same steps driven by Lightning's Trainer (manual optimisation)."""
    import lightning as L
    from torch.utils.data import DataLoader, IterableDataset

    class Forever(IterableDataset):
        def __iter__(self):
            while True:
                yield 0

    class Steps(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            trainer.advance()
            if batch_idx == args.warmup - 1:
                sync()
                self.t0 = time.perf_counter()

        def on_train_end(self):
            sync()
            self.t1 = time.perf_counter()

        def configure_optimizers(self):
            return None

        def train_dataloader(self):
            return DataLoader(Forever(), batch_size=None)

    module = Steps()
    L.Trainer(
        accelerator="auto",
        devices=1,
        max_epochs=1,
        limit_train_batches=args.warmup + args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    ).fit(module)
    return args.steps / (module.t1 - module.t0)


def measure(sizes, arch, k, mode, driver, args, batch_k: int = 1) -> dict:
    """One row; batch_k > 1: a lone run of batch_k times the batch (the ceiling of a pack)."""
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        batch = sizes["batch"] * batch_k
        trainer = make_trainer(sizes, arch, k, mode, args, Path(tmp), batch)
        loop = fabric_loop if driver == "fabric" else lightning_trainer_loop
        rate = loop(trainer, args)
        startup = trainer.clock.startup_s
        extra = {"series": trainer.series} if trainer.series else {}
        extra["compiled_from_step"] = trainer.train_step.compiled_from
        evals = eval_seconds(trainer) if args.eval and driver == "fabric" else {}
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    k = k * batch_k  # a ceiling row stands for a pack of batch_k runs
    row = {
        "arch": arch,
        "k": k,
        "kind": "ceiling" if batch_k > 1 else "pack",
        "compile": mode,
        "driver": driver,
        "steps_per_s": rate,
        "model_steps_per_s": k * rate,
        "samples_per_s": k * rate * sizes["batch"],
        "runs_per_gpu_hour": 3600 * k * rate / args.max_steps,
        "peak_mem_gib": peak,
        "startup_s": startup,  # set-up, compilation and capture: the first steps
        **evals,
        **extra,
    }
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["transformer", "tree_unet"])
    parser.add_argument("--ks", nargs="+", type=int, help="pack sizes (default 1 32)")
    parser.add_argument("--modes", nargs="+", default=["off", "default", "reduce-overhead"])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=10, help="steps before timing")
    parser.add_argument("--max-steps", type=int, default=10_000, help="steps of one run")
    parser.add_argument("--grammar", nargs="+", help="grammar overrides (default L=5 v=32 m=8)")
    parser.add_argument("--seconds", type=float, help="time a window of this length instead")
    parser.add_argument("--start-at", type=float, help="epoch time at which the window starts")
    parser.add_argument("--eval", action="store_true", help="also time one pack evaluation")
    parser.add_argument("--no-trainer-row", action="store_true", help="skip the Lightning row")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--ceiling", action="store_true", help="also one run at batch K x 256")
    parser.add_argument("--quick", action="store_true", help="tiny sizes on the CPU (smoke)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    sizes = dict(QUICK if args.quick else FULL)
    if args.grammar:
        sizes["grammar"] = args.grammar
    if args.quick:
        args.device, args.steps, args.warmup = "cpu", 5, 2
    rows = []
    for arch in args.archs:
        for k in args.ks or sizes["ks"]:
            rows += [measure(sizes, arch, k, mode, "fabric", args) for mode in args.modes]
            if args.ceiling and k > 1:
                rows.append(measure(sizes, arch, 1, args.modes[-1], "fabric", args, batch_k=k))
        if not args.no_trainer_row:
            rows.append(measure(sizes, arch, 1, args.modes[-1], "lightning-trainer", args))
        config = build_config(
            {}, [*sizes["grammar"], f"model.arch={arch}", *sizes[arch], "data.n_test=64"]
        )
        n_params = count_parameters(build_denoiser(config.model, config.grammar))
        for row in rows:
            row.setdefault("params_per_model", n_params)
    gpu = torch.cuda.is_available() and args.device != "cpu"
    report = {
        "precision": "bf16-mixed" if gpu else "32-true",
        "grammar": sizes["grammar"],
        "batch_size": sizes["batch"],
        "max_steps": args.max_steps,
        "timed_steps": None if args.seconds else args.steps,
        "timed_seconds": args.seconds,
        "warmup_steps": args.warmup,
        "rows": rows,
    }
    write_report(report, torch.cuda.get_device_name(0) if gpu else platform.processor(), args.out)


if __name__ == "__main__":
    main()
