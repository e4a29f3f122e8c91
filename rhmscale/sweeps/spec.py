"""Sweep specs: a YAML file, or a preset shipped with the package, read into a SweepSpec.

A spec has a `name`, a `base` (partial RunConfig), a `grid` (dotted keys -> values; grid.py
expands it into runs), an `executor` (where and how the runs execute) and `tracking`. What a
run computes, its compilation included (`base: {train: {compile: ...}}`), is in the run
config; the executor only says where it runs.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from rhmscale.bounds import option_field
from rhmscale.config import TrackingConfig
from rhmscale.config_io import did_you_mean, load_yaml, validated
from rhmscale.errors import UserError
from rhmscale.kinds import Typed

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # whole name: fullmatch (`$` lets "x\n" by)
MAX_NAME = 100


def check_sweep_name(value: str) -> str:
    """A sweep name is one folder under the root: letters, digits, '-', '_', '.'; ValueError
    otherwise. The one rule for spec names and `rhmscale run --sweep`."""
    if not NAME_RE.fullmatch(value) or len(value) > MAX_NAME:
        raise ValueError(
            f"sweep name {value!r} may hold only letters, digits, '-', '_' and '.', "
            f"start with a letter or digit, and be at most {MAX_NAME} characters"
        )
    return value


# sbatch long options a spec may add under `executor.sbatch` (underscores or dashes).
# Options that the executor's own fields set are left out on purpose (SBATCH_FIELDS): the
# fields are validated together, which the sbatch dict would bypass.
KNOWN_SBATCH = frozenset(
    {
        "begin",
        "chdir",
        "comment",
        "contiguous",
        "core-spec",
        "cores-per-socket",
        "deadline",
        "dependency",
        "distribution",
        "exclude",
        "exclusive",
        "export",
        "gpu-bind",
        "gpu-freq",
        "gres-flags",
        "hint",
        "hold",
        "licenses",
        "mail-type",
        "mail-user",
        "mcs-label",
        "mem-bind",
        "mem-per-cpu",
        "mincpus",
        "nice",
        "nodelist",
        "oversubscribe",
        "power",
        "priority",
        "profile",
        "propagate",
        "reservation",
        "sockets-per-node",
        "spread-job",
        "switches",
        "threads-per-core",
        "tmp",
        "uid",
        "wckey",
    }
)
_GPU_FIELDS = "gpus_per_task, gpu_type and gpu_request (GPU shards: tasks_per_gpu, shards_per_gpu)"
SBATCH_FIELDS = {  # sbatch option -> the executor fields that set it
    "partition": "partition",
    "time": "timeout_min",
    "account": "account",
    "qos": "qos",
    "constraint": "constraint",
    "array": "array_parallelism",
    "cpus-per-task": "cpus_per_task",
    "cpus-per-gpu": "cpus_per_gpu",
    "mem": "mem_gb",
    "mem-per-gpu": "mem_per_gpu_gb",
    "gres": _GPU_FIELDS,
    "gpus": _GPU_FIELDS,
    "gpus-per-task": _GPU_FIELDS,
    "gpus-per-node": _GPU_FIELDS,
}
GPU_TYPE_RE = re.compile(r"[A-Za-z0-9_.-]+")
HOW_TO_FIND_SHARDS = (
    "`scontrol show node NODE` shows Gres=gpu:N,shard:M on a node with GPU shards: "
    "shards_per_gpu is M/N"
)


class ExecutorSpec(Typed):
    """Where and how the runs execute. `sbatch` holds extra sbatch options (a known set).

    The GPU fields (gpu_type, gpu_request, cpus_per_gpu, mem_per_gpu_gb, shards_per_gpu) say
    how SLURM allocates GPUs; what SLURM would make of them is checked only when kind is slurm,
    so that a SLURM spec still runs with --executor local, which ignores them (as it ignores
    partition and sbatch).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    kind: Literal["local", "slurm", "debug"] = "local"
    partition: str | None = None
    gpus_per_task: int = Field(0, **option_field("--gpus-per-task"))
    cpus_per_task: int | None = Field(
        None,
        **option_field("--cpus-per-task"),
        description="CPUs of a task (default 1, or cpus_per_gpu x gpus_per_task)",
    )
    mem_gb: float | None = Field(None, gt=0)
    timeout_min: int = Field(60, **option_field("--timeout-min"))
    array_parallelism: int = Field(
        256, **option_field("--array-parallelism"), description="array tasks running at once"
    )
    account: str | None = None
    qos: str | None = None
    constraint: str | None = Field(
        None, description="SLURM node features (--constraint), e.g. a GPU model's feature"
    )
    gpu_type: str | None = Field(
        None,
        description="SLURM: the GPU model to request, as the cluster's gres.conf names it "
        "(e.g. h100): --gpus-per-task=h100:N or --gres=gpu:h100:N",
    )
    gpu_request: Literal["gpus-per-task", "gres"] = Field(
        "gpus-per-task",
        description="SLURM: how GPUs are asked for: --gpus-per-task=[type:]N, or "
        "--gres=gpu:[type:]N for sites whose submit plugins accept only --gres",
    )
    cpus_per_gpu: int | None = Field(
        None,
        **option_field("--cpus-per-task"),
        description="SLURM: --cpus-per-gpu, instead of cpus_per_task",
    )
    mem_per_gpu_gb: float | None = Field(
        None, gt=0, description="SLURM: --mem-per-gpu in GB, instead of mem_gb"
    )
    shards_per_gpu: int | None = Field(
        None,
        **option_field("--shards-per-gpu"),
        description="SLURM: the cluster's GPU shards per GPU (gres.conf shard Count / GPUs); "
        "with tasks_per_gpu T > 1 each task asks for --gres=shard:shards_per_gpu/T",
    )
    runs_per_task: int = Field(
        1,
        **option_field("--runs-per-task"),
        description="runs one array task runs (in sequence, or together with pack)",
    )
    pack: bool = Field(
        False,
        description="train up to runs_per_task runs of one shape together on one device",
    )
    max_num_timeout: int = Field(3, ge=0, description="requeues after time limits")
    workers: int | None = Field(
        None,
        **option_field("--cpus-per-task"),  # a worker each: as many as a task's threads
        description="local: parallel workers (default: GPUs, else cores/cpus)",
    )
    tasks_per_gpu: int = Field(
        1,
        **option_field("--tasks-per-gpu"),
        description="tasks sharing each GPU, each limited to its share of the GPU's memory; "
        "one fills the GPU while another sets up, compiles or evaluates. Local: workers per "
        "GPU; SLURM: each task asks for shards_per_gpu/tasks_per_gpu GPU shards",
    )
    sbatch: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @property
    def cpus(self) -> int:
        """A task's CPUs, which its torch threads use."""
        if self.cpus_per_gpu is not None:
            return self.cpus_per_gpu * max(1, self.gpus_per_task)
        return self.cpus_per_task or 1

    @model_validator(mode="before")
    @classmethod
    def _compile_is_a_run_setting(cls, data: Any) -> Any:
        if isinstance(data, dict) and "compile" in data:
            value = "off" if data["compile"] is False else data["compile"]
            raise ValueError(
                "'compile' is no longer an executor setting: it is part of the run config; "
                f"set base: {{train: {{compile: {value}}}}} in the spec instead"
            )
        return data

    @model_validator(mode="after")
    def _resources(self) -> ExecutorSpec:
        for mine, other in (("cpus_per_gpu", "cpus_per_task"), ("mem_per_gpu_gb", "mem_gb")):
            if getattr(self, mine) is not None and getattr(self, other) is not None:
                raise ValueError(f"set executor.{mine} or executor.{other}, not both")
        if self.tasks_per_gpu > 1 and self.gpus_per_task != 1:
            raise ValueError(
                f"executor.tasks_per_gpu={self.tasks_per_gpu} shares one GPU between tasks: "
                f"set gpus_per_task: 1 (it is {self.gpus_per_task})"
            )
        if self.kind == "slurm":
            check_slurm_gpus(self)
        return self

    @field_validator("gpu_type")
    @classmethod
    def _gpu_type_is_a_name(cls, value: str | None) -> str | None:
        if value is not None and not GPU_TYPE_RE.fullmatch(value):
            raise ValueError(
                f"executor.gpu_type {value!r} may hold only letters, digits, '_', '.' and '-' "
                "(the GPU type as gres.conf names it, e.g. h100)"
            )
        return value

    @field_validator("sbatch")
    @classmethod
    def _known_sbatch(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            flag = key.replace("_", "-").lstrip("-")
            if flag in SBATCH_FIELDS:
                raise ValueError(
                    f"sbatch option '{key}' is set by executor fields, not by hand: "
                    f"set executor.{SBATCH_FIELDS[flag]} instead"
                )
            if flag not in KNOWN_SBATCH:
                hint = did_you_mean(flag, sorted(KNOWN_SBATCH))
                raise ValueError(
                    f"unknown or reserved sbatch option '{key}'{hint}; executor fields set "
                    "partition, time, GPUs, CPUs, memory, account, qos and constraint"
                )
        return value


# Fields that ask for whole GPUs, and what to set instead when a task holds GPU shards.
WHOLE_GPU_FIELDS = {
    "gpu_type": "pick the GPU model with executor.constraint",
    "cpus_per_gpu": "set cpus_per_task",
    "mem_per_gpu_gb": "set mem_gb",
}


def check_slurm_gpus(ex: ExecutorSpec) -> None:
    """The GPU request SLURM would get makes sense; ValueError naming the key otherwise."""
    whole_gpu = [key for key in WHOLE_GPU_FIELDS if getattr(ex, key) is not None]
    if ex.tasks_per_gpu == 1:
        if whole_gpu and not ex.gpus_per_task:
            key = whole_gpu[0]
            raise ValueError(
                f"executor.{key}={getattr(ex, key)} needs GPUs: set executor.gpus_per_task "
                f">= 1, or unset {key}"
            )
        return
    tasks, shards = ex.tasks_per_gpu, ex.shards_per_gpu
    if shards is None:
        raise ValueError(
            f"executor.tasks_per_gpu={tasks} on SLURM shares a GPU through GPU shards: set "
            f"executor.shards_per_gpu to the cluster's shards per GPU ({HOW_TO_FIND_SHARDS}), "
            "or set tasks_per_gpu: 1"
        )
    if shards % tasks:
        raise ValueError(
            f"executor.shards_per_gpu={shards} does not split into tasks_per_gpu={tasks} equal "
            f"shares: set executor.tasks_per_gpu to a divisor of {shards}"
        )
    if whole_gpu:
        key = whole_gpu[0]
        raise ValueError(
            f"executor.{key} asks for whole GPUs, but with tasks_per_gpu={tasks} a task holds "
            f"GPU shards (SLURM grants no GPU with them): unset {key} and "
            f"{WHOLE_GPU_FIELDS[key]}"
        )


class SweepSpec(Typed):
    model_config = ConfigDict(extra="forbid")

    name: str
    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, Any] | list[dict[str, Any]] = Field(default_factory=dict)
    executor: ExecutorSpec = Field(default_factory=ExecutorSpec)
    tracking: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return check_sweep_name(value)

    @field_validator("tracking")
    @classmethod
    def _tracking_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        TrackingConfig.model_validate(value)  # unknown keys / bad values fail here
        return value


def preset_names() -> list[str]:
    folder = resources.files("rhmscale.sweeps") / "presets"
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def load_spec(source: str | Path) -> SweepSpec:
    """A spec from a YAML path, or the name of a preset shipped with the package."""
    path = Path(source)
    if not path.exists() and str(source) in preset_names():
        text = (resources.files("rhmscale.sweeps") / "presets" / f"{source}.yaml").read_text()
        import yaml

        tree = yaml.safe_load(text)
        where = f"preset {source}"
    elif path.exists():
        tree = load_yaml(path)
        where = str(path)
    else:
        raise UserError(
            f"no sweep spec '{source}': not a file and not a preset"
            f"{did_you_mean(str(source), preset_names())} (presets: {', '.join(preset_names())})"
        )
    return parse_spec(tree, where)


def parse_spec(tree: dict[str, Any], where: str = "sweep spec") -> SweepSpec:
    return validated(SweepSpec, tree, f"{where}: ")


def spec_to_yaml(spec: SweepSpec) -> str:
    import yaml

    # by_alias: a study spec's distributions are written as they are read ({float: [lo, hi]})
    return yaml.safe_dump(spec.model_dump(mode="json", by_alias=True), sort_keys=False)
