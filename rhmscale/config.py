"""Configuration of one run: pydantic models, the role of every key, dotted overrides, YAML.

A RunConfig fully determines a run. Every model forbids unknown keys, so a typo is an error
that names the nearest valid key instead of a silently ignored setting.

Every leaf field declares its role once (`setting(default, ROLE, ...)`); whatever sorts keys
derives from it (key_roles):
  science      changes the result: in the run id and in the cell (the fit's grouping);
  seed         in the run id, not in the cell: runs that differ only in seeds are replicates;
  size         data.P, in the run id; the fit's x axis;
  bookkeeping  in neither: where and how a run executes (device, precision, compilation,
               checkpointing, evaluation batch size, W&B), not what it computes.
`per_member=True` marks what the members of one pack may differ in (pack_key); the rest they
share, because the stacked parameters need one shape and the loop one clock (steps, evaluations).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rhmscale.bounds import MAX_EVALS, grammar_problem, size_problem
from rhmscale.kinds import Typed
from rhmscale.sequences import n_sequences

SCIENCE, SEED, SIZE, BOOKKEEPING = "science", "seed", "size", "bookkeeping"
ROLES = (SCIENCE, SEED, SIZE, BOOKKEEPING)
# train.compile (and `rhmscale run --compile`): auto = compiled with CUDA graphs on a GPU and
# eager on a CPU; off = eager; graph = eager, replayed as one CUDA graph on a GPU (nothing to
# compile); or a torch.compile mode (training.step says what each does).
COMPILE_SETTINGS = ("auto", "off", "graph", "default", "reduce-overhead", "max-autotune")


def setting(default: Any = None, role: str = SCIENCE, *, per_member: bool = False, **kw) -> Any:
    """A pydantic Field that declares its role (see the module docstring); its description
    states its upper bound `le` (rhmscale.bounds says why every size has one)."""
    extra = {"role": role, "per_member": per_member}
    if "le" in kw:
        kw["description"] = f"{kw.get('description', '')} (at most {kw['le']:,})".lstrip()
    if "default_factory" in kw:
        return Field(json_schema_extra=extra, **kw)
    return Field(default, json_schema_extra=extra, **kw)


MAX_SEED = 2**32 - 1  # the training generators are seeded 2*seed+2; torch takes < 2**64


class _Strict(Typed):
    # allow_inf_nan=False: train.lr=inf (or nan) is a mistake to refuse, not a run to diverge.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class GrammarConfig(_Strict):
    """Random Hierarchy Model: v symbols a level, m productions a symbol, branching s, depth L."""

    v: int = setting(16, SCIENCE, gt=0, le=1024, description="vocabulary size (symbols a level)")
    m: int = setting(
        4, SCIENCE, per_member=True, gt=0, le=1024, description="synonymous productions a symbol"
    )
    s: int = setting(2, SCIENCE, ge=2, description="branching factor (tuple length)")
    L: int = setting(3, SCIENCE, gt=0, description="depth; sequences have length s**L")
    seed: int = setting(
        0, SEED, per_member=True, ge=0, le=MAX_SEED, description="seed of the grammar's rules"
    )

    @model_validator(mode="after")
    def _bounded_size(self) -> GrammarConfig:
        if problem := grammar_problem(self.v, self.m, self.s, self.L):
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _unambiguous_rules_possible(self) -> GrammarConfig:
        if self.m > self.v ** (self.s - 1):
            raise ValueError(
                f"m={self.m} is larger than v**(s-1)={self.v ** (self.s - 1)}: the v*m productions "
                "of a level cannot all be distinct s-tuples; lower grammar.m or raise grammar.v"
            )
        return self

    @property
    def seq_len(self) -> int:
        return self.s**self.L

    @property
    def n_sequences(self) -> int:
        return n_sequences(self.v, self.m, self.s, self.L)


class DataConfig(_Strict):
    P: int = setting(
        4096, SIZE, per_member=True, gt=0, le=10**8, description="distinct training sequences"
    )
    n_test: int = setting(
        1024, SCIENCE, gt=0, le=10**6, description="held-out sequences (disjoint from training)"
    )


class ModelConfig(_Strict):
    arch: Literal["transformer", "tree_unet"] = setting("tree_unet", SCIENCE)
    width: int = setting(256, SCIENCE, gt=0, le=4096, description="embedding width / channels")
    depth: int = setting(4, SCIENCE, gt=0, le=64, description="transformer layers (not tree_unet)")
    heads: int = setting(4, SCIENCE, gt=0, le=128, description="attention heads (transformer)")
    time_cond: bool = setting(False, SCIENCE, description="condition the denoiser on t")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.arch == "transformer" and self.width % self.heads:
            raise ValueError(
                f"model.width={self.width} must be divisible by model.heads={self.heads}"
            )
        return self


class DiffusionConfig(_Strict):
    schedule: Literal["linear", "cosine"] = setting("linear", SCIENCE)
    antithetic: bool = setting(True, SCIENCE, description="antithetic (stratified) time sampling")
    sampling_steps: int = setting(
        0,
        SCIENCE,
        ge=0,
        le=10_000,
        description="sampler steps on a uniform time grid; 0: exact, one token per step",
    )


class TrainConfig(_Strict):
    max_steps: int = setting(2000, SCIENCE, gt=0, le=10**7)
    batch_size: int = setting(256, SCIENCE, gt=0, le=65_536)
    lr: float = setting(
        1e-3, SCIENCE, per_member=True, gt=0, description="AdamW learning rate after warm-up"
    )
    weight_decay: float = setting(
        0.0, SCIENCE, per_member=True, ge=0, description="AdamW (decoupled) weight decay"
    )
    warmup_steps: int = setting(100, SCIENCE, per_member=True, ge=0, le=10**7)
    lr_schedule: Literal["constant", "cosine"] = setting("constant", SCIENCE, per_member=True)
    grad_clip: float = setting(
        1.0, SCIENCE, per_member=True, ge=0, description="max gradient norm; 0 disables clipping"
    )
    early_stop_patience: int = setting(
        0,
        SCIENCE,
        per_member=True,
        ge=0,
        description="stop after this many evaluations without a lower val/loss (0: never; "
        "max_steps is then the length, else the cap)",
    )
    min_steps: int = setting(
        0, SCIENCE, per_member=True, ge=0, le=10**7, description="no early stop before this step"
    )
    device: Literal["auto", "cpu", "cuda"] = setting("auto", BOOKKEEPING)
    precision: Literal["auto", "32", "bf16"] = setting(
        "auto", BOOKKEEPING, description="auto: bf16 autocast on GPU, fp32 on CPU"
    )
    compile: Literal[COMPILE_SETTINGS] = setting(
        "auto", BOOKKEEPING, description="torch.compile of the training step (see COMPILE_SETTINGS)"
    )
    checkpoint_every: int = setting(500, BOOKKEEPING, gt=0, description="steps between checkpoints")

    @field_validator("precision", "compile", mode="before")
    @classmethod
    def _as_yaml_wrote_it(cls, value: Any) -> Any:
        """`train.precision=32` reaches us as the int 32 and `train.compile=off` as False
        (YAML 1.1 booleans): take them as the strings they mean."""
        if value is False:
            return "off"
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class EvalConfig(_Strict):
    n_samples: int = setting(
        512, SCIENCE, gt=0, le=10**6, description="generated sequences per evaluation"
    )
    n_evals: int = setting(
        8, SCIENCE, ge=1, le=MAX_EVALS, description="log-spaced evaluations, the last at max_steps"
    )
    every: int = setting(
        0, SCIENCE, ge=0, description="also evaluate every this many steps (0: log-spaced only)"
    )
    min_novel: int = setting(
        32,
        SCIENCE,
        ge=1,
        description="gen/novel_*: with fewer novel (non-copy) samples, the missing ones count "
        "as failures",
    )
    val_draws: int = setting(
        4,
        SCIENCE,
        ge=1,
        le=256,
        description="(t, mask) draws per held-out sequence for val/loss, the same draws at every "
        "evaluation (early stopping compares models, not draws)",
    )
    batch_size: int = setting(
        1024, BOOKKEEPING, gt=0, le=65_536, description="batch size for generation and val/loss"
    )


class TrackingConfig(_Strict):
    """How a run is mirrored to W&B: bookkeeping, it does not change what a run computes."""

    wandb: Literal["auto", "online", "offline", "disabled"] = setting(
        "auto", BOOKKEEPING, per_member=True
    )
    project: str = setting("rhmscale", BOOKKEEPING, per_member=True, description="W&B project")
    entity: str | None = setting(
        None, BOOKKEEPING, per_member=True, description="W&B team or user; None: your default"
    )
    group: str | None = setting(
        None,
        BOOKKEEPING,
        per_member=True,
        description="W&B group (a sweep's runs default to its name)",
    )
    tags: list[str] = setting(
        role=BOOKKEEPING, per_member=True, default_factory=list, description="W&B run tags"
    )
    n_table_samples: int = setting(
        8, BOOKKEEPING, per_member=True, ge=0, le=1000, description="samples logged as a table"
    )
    connect_timeout: float = setting(
        5.0,
        BOOKKEEPING,
        per_member=True,
        gt=0,
        le=120,
        description="seconds to reach the W&B server (auto: offline when it does not answer)",
    )
    job_type: str = setting("train", BOOKKEEPING, per_member=True, description="W&B job type")
    name_keys: list[str] = setting(
        role=BOOKKEEPING, per_member=True, default_factory=list,
        description="keys naming the W&B run besides v, m, s, L, P, seed (a sweep: its grid's)",
    )  # fmt: skip
    trial: dict[str, Any] = setting(
        role=BOOKKEEPING,
        per_member=True,
        default_factory=dict,
        description="a tuning trial's study, number and parameters (W&B config)",
    )


class RunConfig(_Strict):
    grammar: GrammarConfig = Field(default_factory=GrammarConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    seed: int = setting(
        0,
        SEED,
        per_member=True,
        ge=0,
        le=MAX_SEED,
        description="seed of data sampling, initialisation, training",
    )

    @model_validator(mode="after")
    def _sizes_bounded(self) -> RunConfig:
        if problem := size_problem(self):
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _enough_distinct_sequences(self) -> RunConfig:
        total = self.grammar.n_sequences
        if self.data.P + self.data.n_test > total:
            raise ValueError(
                f"data.P={self.data.P} plus data.n_test={self.data.n_test} exceeds the "
                f"{total} distinct sequences of this grammar; lower data.P or data.n_test, "
                "or enlarge the grammar (grammar.v, grammar.m, grammar.L)"
            )
        return self

    @model_validator(mode="after")
    def _name_keys_known(self) -> RunConfig:
        if unknown := [key for key in self.tracking.name_keys if key not in key_roles()]:
            raise ValueError(f"tracking.name_keys: unknown keys {unknown} (rhmscale config keys)")
        return self

    def run_id(self) -> str:
        return run_id(self)

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> values, for W&B config and table columns."""
        return config_flat(self)


# --- what each key is for, derived from the roles the fields declare ---------------------------


@dataclass(frozen=True)
class KeyRole:
    role: str
    per_member: bool


@functools.cache
def key_roles(model: type[BaseModel] = RunConfig) -> dict[str, KeyRole]:
    """Every dotted leaf key of a config model, in order, and the role its field declares."""
    roles: dict[str, KeyRole] = {}
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            roles.update({f"{name}.{k}": r for k, r in key_roles(ann).items()})
            continue
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get("role") not in ROLES:
            raise TypeError(f"config field {model.__name__}.{name} declares no role (setting())")
        roles[name] = KeyRole(extra["role"], bool(extra["per_member"]))
    return roles


# The seed replicates differ in (grammar.seed picks the grammar): `sweep refine` adds them by it.
REPLICATE_SEED = "seed"
GRAMMAR_NAMES = ("v", "m", "s", "L")  # GrammarConfig's numbers, as formulas and --where say
GRAMMAR_KEYS = {name: f"grammar.{name}" for name in GRAMMAR_NAMES}  # v -> grammar.v


def size_key(model: type[BaseModel] = RunConfig) -> str:
    """The one key whose role is "size": the fit's x axis (data.P), what `sweep refine` adds."""
    (key,) = [key for key, kind in key_roles(model).items() if kind.role == SIZE]
    return key


def keys_with(config: BaseModel, *roles: str) -> dict[str, Any]:
    """The config's dotted keys whose role is one of `roles`, with their values."""
    kinds = key_roles(type(config))
    return {k: v for k, v in config_flat(config).items() if kinds[k].role in roles}


def run_id(config: BaseModel) -> str:
    """Short stable hash of what changes the result: every key but the bookkeeping."""
    identity = keys_with(config, SCIENCE, SEED, SIZE)
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def cell_of(config: BaseModel) -> dict[str, Any]:
    """The cell a run belongs to: its science keys (runs of one cell differ in P and seeds)."""
    return keys_with(config, SCIENCE)


def cell_columns(columns: list[str], model: type[BaseModel] = RunConfig) -> list[str]:
    """Of a table's columns (flattened config keys among others), those that define a cell."""
    roles = key_roles(model)
    return [c for c in columns if c in roles and roles[c].role == SCIENCE]


def pack_settings(config: BaseModel) -> dict[str, Any]:
    """What the members of one pack must share: every key not marked per_member."""
    kinds = key_roles(type(config))
    return {k: v for k, v in config_flat(config).items() if not kinds[k].per_member}


def pack_key(config: BaseModel) -> str:
    """Runs with equal keys can share a pack (a canonical JSON string, usable as a dict key)."""
    return json.dumps(pack_settings(config), sort_keys=True, separators=(",", ":"))


def member_keys(model: type[BaseModel] = RunConfig) -> list[str]:
    """The keys the members of one pack may differ in."""
    return [key for key, role in key_roles(model).items() if role.per_member]


def config_flat(config: BaseModel) -> dict[str, Any]:
    """Dotted keys -> values of any config model."""
    return flatten(config.model_dump(mode="json"))


def valid_keys() -> list[str]:
    """All dotted leaf keys of a RunConfig."""
    return list(key_roles())


# Config fields whose value is a mapping (a trial's record): one key, not a section.
MAPPING_LEAVES = frozenset({"tracking.trial"})


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name not in MAPPING_LEAVES:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
