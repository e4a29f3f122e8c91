"""What the SLURM cluster can grant, asked before a submission (sinfo): a GPU request that no
node of the partition can meet fails here with the executor key to change, where sbatch's own
refusal ("Invalid generic resource", "Requested node configuration is not available") names
none."""

from __future__ import annotations

import re
import subprocess
from typing import Any

from rhmscale.errors import UserError
from rhmscale.sweeps.spec import ExecutorSpec


def partition_gres(partition: str | None) -> list[dict[str, int]] | None:
    """Each node kind's generic resources in the partition (default: all), as
    {"gpu": count, "gpu:<type>": count of that type, "shard": count}; None when sinfo cannot
    tell."""
    cmd = ["sinfo", "-h", "-o", "%G"] + (["-p", partition] if partition else [])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    return [parse_gres(line) for line in out.stdout.split()]


def parse_gres(text: str) -> dict[str, int]:
    """sinfo's %G of one node kind ("gpu:h100:4(S:0-1),shard:16", "(null)") as counts by name
    and by name:type."""
    counts: dict[str, int] = {}
    for item in re.sub(r"\([^)]*\)", "", text).split(","):  # drop "(S:0-1)" socket hints
        fields = item.split(":")
        if len(fields) >= 2 and fields[-1].isdigit():
            names = [fields[0]] + ([f"{fields[0]}:{fields[1]}"] if len(fields) == 3 else [])
            for key in names:
                counts[key] = counts.get(key, 0) + int(fields[-1])
    return counts


def check_partition_gpus(ex: ExecutorSpec, request: dict[str, Any]) -> None:
    """Refuse, before sbatch, GPUs or shards that no node of the partition has: sbatch's own
    refusal ("Invalid generic resource", "Requested node configuration is not available")
    names no setting. Silent when sinfo cannot answer (sbatch still decides)."""
    if not request or (kinds := partition_gres(ex.partition)) is None:
        return
    where = f"partition {ex.partition}" if ex.partition else "the default partition"
    have = ", ".join(sorted({f"gpu:{k.get('gpu', 0)},shard:{k.get('shard', 0)}" for k in kinds}))
    if "shard" in request.get("gres", ""):
        per_gpu = {k["shard"] // k["gpu"] for k in kinds if k.get("shard") and k.get("gpu")}
        if not per_gpu:
            raise UserError(
                f"executor.tasks_per_gpu={ex.tasks_per_gpu} asks for GPU shards, and the nodes "
                f"of {where} have none ({have} per node): set tasks_per_gpu: 1, or choose a "
                "partition with shards (executor.partition)"
            )
        if ex.shards_per_gpu not in per_gpu:
            raise UserError(
                f"executor.shards_per_gpu={ex.shards_per_gpu}, but the nodes of {where} give "
                f"each GPU {' or '.join(map(str, sorted(per_gpu)))} shards ({have} per node): "
                "set executor.shards_per_gpu to that"
            )
        return
    if ex.gpu_type:
        key = f"gpu:{ex.gpu_type}"
        types = sorted({k.split(":", 1)[1] for kind in kinds for k in kind if k.startswith("gpu:")})
        if not any(kind.get(key) for kind in kinds):
            raise UserError(
                f"executor.gpu_type={ex.gpu_type}, but the GPUs of {where} are "
                + (f"of the types {', '.join(types)}" if types else "untyped")
                + " (sinfo -o %G): set executor.gpu_type to one of those, or leave it out"
            )
    most = max(k.get(f"gpu:{ex.gpu_type}" if ex.gpu_type else "gpu", 0) for k in kinds)
    if ex.gpus_per_task > most:
        raise UserError(
            f"executor.gpus_per_task={ex.gpus_per_task}, but the nodes of {where} have at most "
            f"{most} GPU(s) ({have} per node): lower executor.gpus_per_task, or choose a GPU "
            "partition (executor.partition)"
        )
