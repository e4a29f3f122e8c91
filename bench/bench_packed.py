"""Packed training speed: K runs on one GPU, against K runs one after another and a ceiling.

For the default transformer (width 256, depth 4) and the tree U-Net on L=5, s=2, v=32, m=8,
batch 256, it times training steps only (no evaluation, no start-up), after warm-up steps,
between torch.cuda.synchronize calls, in bf16 on a GPU:
  (a) sequential: one ordinary run's step, through the Lightning path runs use and in a bare
      loop; K runs one after another take K times as long;
  (b) packed K = 8, 32, 64: PackTrainer.train_step, eager, and torch.compile'd with --compile;
  (c) ceiling: one model of the same size with batch K*256, torch.compile'd, fused AdamW.
Each row: model-steps/s (member steps per second; (c): K times its steps/s), samples/s,
runs per GPU-hour at --max-steps (training steps only), peak GPU memory; packed rows also
their speed-up over (a) and their fraction of (c).

    python bench/bench_packed.py --out bench/results/packed_gpu_h100.json   # on a GPU
    python bench/bench_packed.py --compile default --archs transformer       # + compiled packs
    python bench/bench_packed.py --quick                                     # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from bench_train import StepTimer  # bench/ is on sys.path when run as a script
from timing import write_report

from rhmscale.config import RunConfig
from rhmscale.config_io import build_config
from rhmscale.models import MaskedDiffusion, build_denoiser, count_parameters
from rhmscale.rhm.data import make_datasets
from rhmscale.store.folders import RunDir
from rhmscale.training.packed import Member, PackTrainer
from rhmscale.training.train import DiffusionLM, resolve_device, resolve_precision, train

FULL = {
    "grammar": ["grammar.L=5", "grammar.s=2", "grammar.v=32", "grammar.m=8"],
    "transformer": ["model.width=256", "model.depth=4", "model.heads=4"],
    "tree_unet": ["model.width=256"],
    "batch": 256,
    "ks": [8, 32, 64],
}
QUICK = {
    "grammar": ["grammar.L=3", "grammar.s=2", "grammar.v=8", "grammar.m=2", "data.P=256"],
    "transformer": ["model.width=32", "model.depth=2", "model.heads=2"],
    "tree_unet": ["model.width=32"],
    "batch": 16,
    "ks": [2, 4],
}


def make_config(sizes: dict, arch: str, args, seed: int = 0, batch: int | None = None):
    return build_config(
        {},
        [
            *sizes["grammar"],
            f"model.arch={arch}",
            *sizes[arch],
            f"train.batch_size={batch or sizes['batch']}",
            f"train.max_steps={args.max_steps}",
            f"train.checkpoint_every={args.max_steps}",
            f"train.device={args.device}",
            "eval.n_evals=1",
            "eval.n_samples=64",
            "data.n_test=64",
            "tracking.wandb=disabled",
            f"seed={seed}",
        ],
    )


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_steps(step, device: str, steps: int, warmup: int) -> dict:
    """Steps/s of `step()` after warm-up (compilation included there); peak memory in GiB."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    rate = steps / (time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return {"steps_per_s": rate, "peak_mem_gib": peak}


def row(kind: str, arch: str, k: int, model_steps: float, batch: int, args, **extra) -> dict:
    return {
        "kind": kind,
        "arch": arch,
        "k": k,
        "model_steps_per_s": model_steps,
        "samples_per_s": model_steps * batch,
        "runs_per_gpu_hour": 3600 * model_steps / args.max_steps,
        **extra,
    }


def sequential(config: RunConfig, args) -> list[dict]:
    """(a): one ordinary run's step; K runs one after another take K times as long."""
    device = resolve_device(config)
    data = make_datasets(config)
    n = args.warmup + args.steps
    timer = StepTimer(args.warmup, n)
    lone = config.model_copy(update={"train": config.train.model_copy(update={"max_steps": n + 1})})
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        train(lone, data, RunDir(Path(tmp)), callbacks=[timer])
    lightning = args.steps / (timer.t1 - timer.t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    compiled = []
    for mode in args.compile:  # the same lone run, forward and loss compiled (what runs do)
        timer = StepTimer(args.warmup + args.compile_warmup, n + args.compile_warmup)
        longer = lone.train.model_copy(update={"max_steps": n + args.compile_warmup + 1})
        with tempfile.TemporaryDirectory() as tmp:
            train(
                lone.model_copy(update={"train": longer}),
                data,
                RunDir(Path(tmp)),
                callbacks=[timer],
                compile=mode,
            )
        rate = args.steps / (timer.t1 - timer.t0)
        kind = f"sequential-lightning-compiled-{mode}"
        compiled.append(row(kind, config.model.arch, 1, rate, config.train.batch_size, args))

    module = DiffusionLM(config, data.train).to(device)
    module.on_fit_start()
    module.log = lambda *a, **k: None  # no trainer attached
    opt = torch.optim.AdamW(module.denoiser.parameters(), lr=1e-3, fused=device == "cuda")
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")

    def step():
        with autocast:
            loss = module.training_step(None, 0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.denoiser.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    bare = time_steps(step, device, args.steps, args.warmup)
    arch, batch = config.model.arch, config.train.batch_size
    return [
        row("sequential-lightning", arch, 1, lightning, batch, args, peak_mem_gib=peak),
        row("sequential-bare", arch, 1, bare["steps_per_s"], batch, args, **bare),
        *compiled,
    ]


def packed(sizes: dict, arch: str, k: int, args, compile_mode: str | None) -> dict:
    """(b): K members in one PackTrainer; its training step only."""
    configs = [make_config(sizes, arch, args, seed=i) for i in range(k)]
    data = make_datasets(configs[0])  # members' data sets do not change the speed
    with tempfile.TemporaryDirectory() as tmp:
        members = [Member(c, data, RunDir(Path(tmp) / str(i))) for i, c in enumerate(configs)]
        trainer = PackTrainer(members, compile=compile_mode or False)
        warmup = args.warmup + (args.compile_warmup if compile_mode else 0)
        timing = time_steps(trainer.train_step, trainer.device.type, args.steps, warmup)
    kind = f"packed-compiled-{compile_mode}" if compile_mode else "packed"
    model_steps = k * timing["steps_per_s"]
    return row(kind, arch, k, model_steps, sizes["batch"], args, **timing)


def ceiling(sizes: dict, arch: str, k: int, args) -> dict:
    """(c): one model of the same size, batch K*batch, compiled forward and loss, fused AdamW."""
    config = make_config(sizes, arch, args, batch=k * sizes["batch"])
    device = resolve_device(config)
    torch.manual_seed(0)
    model = build_denoiser(config.model, config.grammar).to(device)
    diffusion = MaskedDiffusion(config.grammar.v)
    data = torch.as_tensor(make_datasets(config).train, device=device)
    gen = torch.Generator(device).manual_seed(1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device == "cuda")
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")

    @torch.compile
    def forward_loss(x0, x_t, t):
        return diffusion.loss_from_logits(model(x_t, t), x0, x_t, t).mean()

    def step():
        x0 = data[
            torch.randint(len(data), (config.train.batch_size,), device=device, generator=gen)
        ]
        t = diffusion.sample_times(len(x0), device, gen)
        x_t = diffusion.corrupt(x0, t, gen)
        with autocast:
            loss = forward_loss(x0, x_t, t)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    timing = time_steps(step, device, args.steps, args.warmup + args.compile_warmup)
    return row(
        "ceiling-big-batch-compiled",
        arch,
        k,
        k * timing["steps_per_s"],
        sizes["batch"],
        args,
        batch_size=k * sizes["batch"],
        **timing,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["transformer", "tree_unet"])
    parser.add_argument("--ks", nargs="+", type=int, help="pack sizes (default 8 32 64)")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--compile-warmup", type=int, default=5, help="extra, when compiling")
    parser.add_argument(
        "--compile",
        action="append",
        default=[],
        metavar="MODE",
        help="also time compiled packs (torch.compile mode: default, "
        "reduce-overhead, max-autotune-no-cudagraphs); repeatable",
    )
    parser.add_argument("--no-ceiling", action="store_true", help="skip (c)")
    parser.add_argument("--max-steps", type=int, default=10_000, help="steps of one run")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="tiny sizes on the CPU (smoke)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.quick:
        args.device, args.steps, args.warmup, args.compile_warmup = "cpu", 5, 2, 1
    ks = args.ks or sizes["ks"]
    rows = []
    for arch in args.archs:
        config = make_config(sizes, arch, args)
        base = sequential(config, args)
        rows += base
        ceilings = {}
        for k in ks:
            if not args.no_ceiling:
                torch._dynamo.reset()
                ceilings[k] = ceiling(sizes, arch, k, args)
                rows.append(ceilings[k])
            for mode in [None, *args.compile]:
                torch._dynamo.reset()
                result = packed(sizes, arch, k, args, mode)
                result["speedup_vs_sequential"] = (
                    result["model_steps_per_s"] / base[0]["model_steps_per_s"]
                )
                if k in ceilings:
                    result["fraction_of_ceiling"] = (
                        result["model_steps_per_s"] / ceilings[k]["model_steps_per_s"]
                    )
                rows.append(result)
        n_params = count_parameters(build_denoiser(config.model, config.grammar))
        for r in rows:
            if r["arch"] == arch:
                r["params_per_model"] = n_params
                print(json.dumps(r), flush=True)
    device = resolve_device(make_config(sizes, args.archs[0], args))
    report = {
        "precision": resolve_precision(make_config(sizes, args.archs[0], args), device),
        "grammar": sizes["grammar"],
        "batch_size": sizes["batch"],
        "max_steps": args.max_steps,
        "timed_steps": args.steps,
        "rows": rows,
    }
    name = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor()
    write_report(report, name, args.out)


if __name__ == "__main__":
    main()
