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

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rhmscale.config import TrackingConfig
from rhmscale.config_io import did_you_mean, load_yaml, validated
from rhmscale.errors import UserError

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
# Options that the executor's own fields set (partition, time, gpus, cpus, mem, array, ...)
# are left out on purpose: set those fields instead.
KNOWN_SBATCH = frozenset(
    {
        "begin",
        "chdir",
        "comment",
        "constraint",
        "contiguous",
        "core-spec",
        "cores-per-socket",
        "cpus-per-gpu",
        "deadline",
        "dependency",
        "distribution",
        "exclude",
        "exclusive",
        "export",
        "gpu-bind",
        "gpu-freq",
        "gres",
        "gres-flags",
        "hint",
        "hold",
        "licenses",
        "mail-type",
        "mail-user",
        "mcs-label",
        "mem-bind",
        "mem-per-cpu",
        "mem-per-gpu",
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


class ExecutorSpec(BaseModel):
    """Where and how the runs execute. `sbatch` holds extra sbatch options (a known set)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    kind: Literal["local", "slurm", "debug"] = "local"
    partition: str | None = None
    gpus_per_task: int = Field(0, ge=0)
    cpus_per_task: int = Field(1, ge=1)
    mem_gb: float | None = Field(None, gt=0)
    timeout_min: int = Field(60, ge=1)
    array_parallelism: int = Field(256, ge=1, description="array tasks running at once")
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    runs_per_task: int = Field(
        1, ge=1, description="runs one array task runs (in sequence, or together with pack)"
    )
    pack: bool = Field(
        False,
        description="train up to runs_per_task runs of one shape together on one device",
    )
    max_num_timeout: int = Field(3, ge=0, description="requeues after time limits")
    workers: int | None = Field(
        None, ge=1, description="local: parallel workers (default: GPUs, else cores/cpus)"
    )
    tasks_per_gpu: int = Field(
        1,
        ge=1,
        le=16,
        description="local: workers sharing each GPU, each limited to its share of the GPU's "
        "memory; one fills the GPU while another sets up, compiles or evaluates",
    )
    sbatch: dict[str, str | int | float | bool] = Field(default_factory=dict)

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
    def _shared_gpus(self) -> ExecutorSpec:
        if self.tasks_per_gpu == 1:
            return self
        if self.kind == "slurm":
            raise ValueError(
                "executor.tasks_per_gpu is for the local executor; on SLURM a GPU is shared "
                "through GPU shards, which rhmscale does not request yet: set tasks_per_gpu: 1, "
                "or run the sweep on a GPU machine with --executor local"
            )
        if self.gpus_per_task != 1:
            raise ValueError(
                f"executor.tasks_per_gpu={self.tasks_per_gpu} shares one GPU between tasks: "
                f"set gpus_per_task: 1 (it is {self.gpus_per_task})"
            )
        return self

    @field_validator("sbatch")
    @classmethod
    def _known_sbatch(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            flag = key.replace("_", "-").lstrip("-")
            if flag not in KNOWN_SBATCH:
                hint = did_you_mean(flag, sorted(KNOWN_SBATCH))
                raise ValueError(
                    f"unknown or reserved sbatch option '{key}'{hint} (partition, time, gpus, "
                    "cpus, mem, account, qos and constraint are executor fields)"
                )
        return value


class SweepSpec(BaseModel):
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
            f"no sweep spec '{source}': not a file and not a preset "
            f"(presets: {', '.join(preset_names())})"
        )
    return parse_spec(tree, where)


def parse_spec(tree: dict[str, Any], where: str = "sweep spec") -> SweepSpec:
    return validated(SweepSpec, tree, f"{where}: ")


def spec_to_yaml(spec: SweepSpec) -> str:
    import yaml

    # by_alias: a study spec's distributions are written as they are read ({float: [lo, hi]})
    return yaml.safe_dump(spec.model_dump(mode="json", by_alias=True), sort_keys=False)
