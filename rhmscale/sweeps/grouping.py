"""Which runs go together: packs of one shape, and the array tasks that run them.

An item is one run to submit: {"run_id", "config" (RunConfig as JSON), "run_dir", "shape",
"cost"}, plus "pack" (its pack's number) when the executor packs. A task is one worker: on SLURM
one per pack (or per `runs_per_task` runs), locally `workers` of them, the debug executor one.
Workers take their runs from the sweep's backlog, the most expensive first, so the grouping here
decides how many workers start and how many slots each has (the largest pack), and what `sweep
plan` shows; runs and packs go longest first, by their expected cost (cost.py).
"""

from __future__ import annotations

import itertools
import math
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

from rhmscale.config import flatten, key_roles, member_keys
from rhmscale.sweeps.cost import expected_steps, pack_cost
from rhmscale.sweeps.gpus import visible_gpu_count
from rhmscale.sweeps.spec import ExecutorSpec

Item = dict[str, Any]


def local_workers(ex: ExecutorSpec) -> int:
    """Local tasks at once: `workers`, else `tasks_per_gpu` per `gpus_per_task` GPUs, else one
    per task's CPUs."""
    if ex.workers:
        return ex.workers
    if ex.gpus_per_task:
        n_gpus = visible_gpu_count()
        if n_gpus:
            return max(1, n_gpus // ex.gpus_per_task) * ex.tasks_per_gpu
    return max(1, (os.cpu_count() or 1) // ex.cpus)


def group_tasks(items: list[Item], ex: ExecutorSpec) -> list[list[Item]]:
    if not items:
        return []
    if ex.pack:
        return group_packed_tasks(items, ex)
    items = longest_first(items)
    if ex.kind == "local":
        n = min(len(items), local_workers(ex))
        return [items[i::n] for i in range(n)]
    if ex.kind == "debug":
        return [items]
    size = ex.runs_per_task
    return [items[i : i + size] for i in range(0, len(items), size)]


def longest_first(items: list[Item]) -> list[Item]:
    """Unpacked runs in order of expected cost (cost.pack_cost of each alone), the longest
    first, so that the longest start first, as packs do; ties keep their order."""
    from rhmscale.config import RunConfig

    costs = [pack_cost([RunConfig.model_validate(item["config"])]) for item in items]
    return [item for _, item in sorted(zip(costs, items, strict=True), key=lambda ci: -ci[0])]


def make_packs(items: list[Item], size: int) -> list[list[Item]]:
    """Runs of one shape (pack_key) in packs of up to `size`, runs of similar data.P together,
    the packs in order of their expected cost (cost.pack_cost), the most expensive first.

    A pack steps until its last member stops, and with early stopping a run's length grows with
    its training set: packing runs in order of P lets the small-P packs end early instead of
    every pack waiting for its largest P. Packs of one shape are filled evenly (sizes differ by
    at most one), so that no pack is a lone straggler holding its GPU for a fraction of the work.
    """
    from rhmscale.config import RunConfig, pack_key

    shapes: dict[str, list[tuple[RunConfig, Item]]] = {}
    for item in items:
        config = RunConfig.model_validate(item["config"])
        shapes.setdefault(pack_key(config), []).append((config, item))
    packs: list[tuple[tuple[float, int], list[Item]]] = []
    for members in shapes.values():
        ordered = sorted(members, key=lambda pair: pair[0].data.P)
        n_packs = math.ceil(len(ordered) / size)
        bounds = [round(i * len(ordered) / n_packs) for i in range(n_packs + 1)]
        for a, b in itertools.pairwise(bounds):
            pack = ordered[a:b]
            configs = [config for config, _ in pack]
            longest = (pack_cost(configs), max(c.data.P for c in configs))
            packs.append((longest, [item for _, item in pack]))
    # Equal costs (e.g. runs that all reach max_steps): the pack of more data first.
    return [pack for _, pack in sorted(packs, key=lambda pair: pair[0], reverse=True)]


def group_packed_tasks(items: list[Item], ex: ExecutorSpec) -> list[list[Item]]:
    """Each item gets its pack number; a task holds whole packs (one, except local/debug).

    Packs are numbered longest first (by expected cost: more data, longer sequences and more
    steps cost more), so that workers and array tasks start the long packs together and the
    short ones fill in after them, rather than one ending alone on a long pack.

    Locally a pack holds at most runs / workers runs (rounded down), so that every worker has
    one: fewer packs than workers would leave workers, and on a node of several GPUs whole
    GPUs, idle while the few packs train.
    """
    workers = local_workers(ex) if ex.kind == "local" else 1
    size = min(ex.runs_per_task, max(1, len(items) // workers))
    packs = make_packs(items, size)
    for number, pack in enumerate(packs):
        for item in pack:
            item["pack"] = number
    if ex.kind == "slurm":
        return packs
    # Local workers take runs from the sweep's backlog (job.SweepWorker); a task here is one
    # worker, shown with the packs it would start with if every worker took its turn.
    n = min(len(packs), workers)
    return [[item for pack in packs[i::n] for item in pack] for i in range(n)]


def slots_of(tasks: list[list[Item]]) -> int:
    """A worker's slots: the largest pack planned (1 when runs are not packed)."""
    sizes = Counter(item.get("pack") for task in tasks for item in task)
    return 1 if None in sizes else max(sizes.values(), default=1)


@dataclass
class PackRow:
    number: int
    size: int
    shape: dict[str, Any]  # the plan's shape keys: this pack's value
    members: dict[str, list[Any]]  # the plan's member keys: this pack's members' values
    steps: int  # expected steps of its longest member (cost.expected_steps)
    cost: float  # expected token-samples (cost.pack_cost)


@dataclass
class PackPlan:
    """What the packs of a submission are: for each pack, the settings its members share that
    tell it from the other packs (shape keys), and the values its members differ in."""

    shape_keys: list[str]  # shared within a pack, different between packs
    member_keys: list[str]  # per-member keys that take more than one value
    packs: list[PackRow]


def distinct(values: list[Any]) -> list[Any]:
    """Each value once; numbers in order, anything else in order of appearance."""
    unique = [v for i, v in enumerate(values) if v not in values[:i]]
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in unique):
        unique.sort()
    return unique


def pack_plan(tasks: list[list[Item]]) -> PackPlan:
    from rhmscale.config import RunConfig

    by_run: dict[int, dict[str, dict[str, Any]]] = {}
    for task in tasks:  # a run once, also when workers share a queue of every pack
        for item in task:
            by_run.setdefault(item["pack"], {})[item["run_id"]] = item["config"]
    validated = {
        number: [RunConfig.model_validate(c) for c in pack.values()]
        for number, pack in by_run.items()
    }
    members = {number: [flatten(c) for c in pack.values()] for number, pack in by_run.items()}
    flat = [config for pack in members.values() for config in pack]
    per_member = set(member_keys())

    def varies(key: str, configs: list[dict[str, Any]]) -> bool:
        return len({repr(c.get(key)) for c in configs}) > 1

    shared = [k for k in key_roles() if k not in per_member]
    firsts = [pack[0] for pack in members.values()]
    shape_keys = [k for k in shared if varies(k, firsts)]
    varying = [k for k in member_keys() if varies(k, flat)]
    packs = [
        PackRow(
            number,
            len(configs),
            {k: configs[0].get(k) for k in shape_keys},
            {k: distinct([c.get(k) for c in configs]) for k in varying},
            max(expected_steps(c) for c in validated[number]),
            pack_cost(validated[number]),
        )
        for number, configs in sorted(members.items())
    ]
    return PackPlan(shape_keys, varying, packs)
