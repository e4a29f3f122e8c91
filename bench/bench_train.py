"""Training speed of one run: steps/s and samples/s, and how busy the GPU is.

For each architecture and batch size it measures
  - the real training path (`pipeline.train.train`: Lightning, bf16 autocast on GPU), steps/s
    between a warm-up step and the last step (evaluation excluded);
  - the same step in a bare PyTorch loop (no Lightning), the ceiling for this model without
    CUDA graphs or compilation;
  - GPU busy: kernel time / wall time of the bare loop from torch.profiler, and NVML's
    utilisation sampled during the Lightning run.

    python bench/bench_train.py --out bench/results/train_gpu.json         # on a GPU
    python bench/bench_train.py --steps 30 --batches 32 --device cpu      # smoke test
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import threading
import time
from pathlib import Path

import lightning as L
import torch
from timing import write_report  # bench/timing.py (the script's folder is on sys.path)

from rhmscale.config_io import build_config
from rhmscale.models import count_parameters
from rhmscale.rhm.data import make_datasets
from rhmscale.store.folders import RunDir
from rhmscale.training.train import DiffusionLM, resolve_device, resolve_precision, train


class StepTimer(L.Callback):
    def __init__(self, start_step: int, stop_step: int):
        self.start_step, self.stop_step = start_step, stop_step
        self.t0 = self.t1 = 0.0

    def _sync(self, module):
        if module.device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_end(self, trainer, module, *args):
        if trainer.global_step == self.start_step:
            self._sync(module)
            self.t0 = time.perf_counter()
        elif trainer.global_step == self.stop_step:
            self._sync(module)
            self.t1 = time.perf_counter()


class NvmlSampler:
    """GPU utilisation (% of time a kernel ran) sampled every 50 ms in a thread."""

    def __init__(self):
        self.samples: list[int] = []
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._nvml = pynvml
        except Exception:
            self._nvml = None

    def __enter__(self):
        if self._nvml:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.05):
            self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)

    def __exit__(self, *exc):
        self._stop.set()

    def mean(self) -> float | None:
        tail = self.samples[len(self.samples) // 5 :]  # skip the start-up
        return sum(tail) / len(tail) if tail else None


def bare_loop(config, data, steps: int, warmup: int) -> dict:
    """The same training step without Lightning; times it and profiles kernel time."""
    device = resolve_device(config)
    module = DiffusionLM(config, data.train).to(device)
    module.on_fit_start()
    opt = torch.optim.AdamW(module.denoiser.parameters(), lr=1e-3, fused=device == "cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")

    def step():
        with autocast:
            loss = module.training_step(None, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.denoiser.parameters(), 1.0)
        opt.step()

    module.log = lambda *a, **k: None  # no trainer attached
    for _ in range(warmup):
        step()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    wall = time.perf_counter() - t0
    busy = None
    if device == "cuda":
        from torch.profiler import ProfilerActivity, profile

        n = 20
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            sync()
            t0 = time.perf_counter()
            for _ in range(n):
                step()
            sync()
            prof_wall = time.perf_counter() - t0
        kernel_us = sum(e.self_device_time_total for e in prof.key_averages())
        busy = kernel_us / 1e6 / prof_wall
    return {"steps_per_s": steps / wall, "gpu_kernel_busy": busy}


def bench_one(arch: str, batch: int, steps: int, device: str, overrides: list[str]) -> dict:
    config = build_config(
        {},
        [
            f"model.arch={arch}",
            f"train.batch_size={batch}",
            f"train.max_steps={steps}",
            f"train.checkpoint_every={steps}",
            "eval.n_evals=1",
            f"train.device={device}",
            "tracking.wandb=disabled",
            *overrides,
        ],
    )
    data = make_datasets(config)
    warm = max(5, steps // 5)
    timer = StepTimer(warm, steps - 1)
    with tempfile.TemporaryDirectory() as tmp, NvmlSampler() as nvml:
        train(config, data, RunDir(Path(tmp)), callbacks=[timer])
    lightning_sps = (steps - 1 - warm) / (timer.t1 - timer.t0)
    bare = bare_loop(config, data, steps=max(20, steps // 2), warmup=warm)
    dev = resolve_device(config)
    return {
        "arch": arch,
        "batch_size": batch,
        "params": count_parameters(DiffusionLM(config, data.train[:1]).denoiser),
        "grammar": config.grammar.model_dump(),
        "precision": resolve_precision(config, dev),
        "lightning_steps_per_s": lightning_sps,
        "lightning_samples_per_s": lightning_sps * batch,
        "bare_steps_per_s": bare["steps_per_s"],
        "bare_samples_per_s": bare["steps_per_s"] * batch,
        "gpu_kernel_busy_bare": bare["gpu_kernel_busy"],
        "nvml_util_lightning": nvml.mean(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["transformer", "tree_unet"])
    parser.add_argument("--batches", nargs="+", type=int, default=[256, 4096])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--device", default="auto")
    parser.add_argument("-o", "--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = []
    for arch in args.archs:
        for batch in args.batches:
            row = bench_one(arch, batch, args.steps, args.device, args.overrides)
            rows.append(row)
            print(
                f"{arch:12s} batch {batch:5d}: lightning {row['lightning_steps_per_s']:7.1f} "
                f"steps/s ({row['lightning_samples_per_s']:9.0f} samples/s), bare "
                f"{row['bare_steps_per_s']:7.1f} steps/s, "
                f"kernel-busy {row['gpu_kernel_busy_bare']}, "
                f"nvml {row['nvml_util_lightning']}",
                flush=True,
            )
    device_name = (
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor()
    )
    write_report({"rows": rows}, device_name, args.out)


if __name__ == "__main__":
    main()
