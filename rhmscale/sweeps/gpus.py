"""Which GPUs the local executor's workers get.

A submission may use the GPUs that CUDA_VISIBLE_DEVICES names (set by the user or by SLURM:
"2,3" means those two and no other), else every GPU torch sees. Worker i of a submission gets
the (i mod G)-th group of `gpus_per_task` of them, G = GPUs // gpus_per_task: with one GPU a
task and `tasks_per_gpu` T on N GPUs, the N*T workers are dealt round the GPUs, worker i on GPU
i mod N, T to each. A worker is handed its GPUs under the names the submitting process used
("2,3" gives workers "2" and "3", not "0" and "1"); submitit sets the worker's
CUDA_VISIBLE_DEVICES from them, and each run.log repeats what the worker got.
"""

from __future__ import annotations

import os

from rhmscale.errors import UserError


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them, else torch's indices.
    As CUDA does, a negative index ends the list ("-1": no GPU)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        try:
            import torch

            return [str(i) for i in range(torch.cuda.device_count())]
        except Exception:  # noqa: BLE001 - no torch or no driver: no GPU
            return []
    names = []
    for name in (part.strip() for part in env.split(",")):
        if not name or name.startswith("-"):
            break
        names.append(name)
    return names


def visible_gpu_count() -> int:
    return len(visible_gpus())


def worker_gpus(n_workers: int, gpus_per_task: int, gpus: list[str]) -> list[tuple[str, ...]]:
    """The GPUs of each of n_workers workers: disjoint groups of gpus_per_task, dealt round."""
    if gpus_per_task > len(gpus):
        raise UserError(
            f"executor.gpus_per_task={gpus_per_task} but {len(gpus)} GPU(s) are visible here "
            f"({visible_note()}): lower gpus_per_task, or run where more GPUs are visible"
        )
    groups = [
        tuple(gpus[k : k + gpus_per_task])
        for k in range(0, len(gpus) - gpus_per_task + 1, gpus_per_task)
    ]
    return [groups[i % len(groups)] for i in range(n_workers)]


def as_indices(gpus: tuple[str, ...]) -> tuple[int, ...]:
    """GPU names as the integers submitit's local executor takes (it writes them into the
    worker's CUDA_VISIBLE_DEVICES); UUID or MIG names cannot pass through it."""
    if not all(name.isdigit() for name in gpus):
        raise UserError(
            f"the local executor hands workers GPUs by index, and {visible_note()} names them "
            "otherwise: set CUDA_VISIBLE_DEVICES to GPU indices (nvidia-smi -L lists them), "
            "e.g. CUDA_VISIBLE_DEVICES=0,1"
        )
    return tuple(int(name) for name in gpus)


def visible_note() -> str:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    return "CUDA_VISIBLE_DEVICES unset" if env is None else f"CUDA_VISIBLE_DEVICES={env}"
