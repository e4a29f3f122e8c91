"""Configuration of one run: pydantic models, dotted overrides, YAML loading and run ids.

A RunConfig fully determines a run. Every model forbids unknown keys, so a typo is an error
that names the nearest valid key instead of a silently ignored setting.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rhmscale.errors import UserError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class GrammarConfig(_Strict):
    """Random Hierarchy Model: v symbols a level, m productions a symbol, branching s, depth L."""

    v: int = Field(16, gt=0, description="vocabulary size (symbols at every level)")
    m: int = Field(4, gt=0, description="synonymous productions per symbol")
    s: int = Field(2, ge=2, description="branching factor (tuple length)")
    L: int = Field(3, gt=0, description="depth; sequences have length s**L")
    seed: int = Field(0, ge=0, description="seed of the grammar's rules")

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
        """Exact number of distinct sequences: v roots times m choices at every internal node."""
        internal_nodes = (self.s**self.L - 1) // (self.s - 1)
        return self.v * self.m**internal_nodes


class DataConfig(_Strict):
    P: int = Field(4096, gt=0, description="number of distinct training sequences")
    n_test: int = Field(1024, gt=0, description="held-out sequences (disjoint from training)")


class ModelConfig(_Strict):
    arch: Literal["transformer", "tree_unet"] = "transformer"
    width: int = Field(256, gt=0, description="embedding width / channels")
    depth: int = Field(4, gt=0, description="transformer layers (ignored by tree_unet)")
    heads: int = Field(4, gt=0, description="attention heads (transformer)")
    time_cond: bool = Field(False, description="condition the denoiser on t")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.arch == "transformer" and self.width % self.heads:
            raise ValueError(
                f"model.width={self.width} must be divisible by model.heads={self.heads}"
            )
        return self


class DiffusionConfig(_Strict):
    schedule: Literal["linear", "cosine"] = "linear"
    antithetic: bool = Field(True, description="antithetic (stratified) time sampling")
    sampling_steps: int = Field(
        0, ge=0, description="sampler steps on a uniform time grid; 0: exact, one token per step"
    )


class TrainConfig(_Strict):
    max_steps: int = Field(2000, gt=0)
    batch_size: int = Field(256, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(100, ge=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    grad_clip: float = Field(1.0, ge=0, description="max gradient norm; 0 disables clipping")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on GPU, fp32 on CPU"
    )
    checkpoint_every: int = Field(500, gt=0, description="steps between checkpoints")


class EvalConfig(_Strict):
    n_samples: int = Field(512, gt=0, description="generated sequences per evaluation")
    n_evals: int = Field(8, ge=1, description="log-spaced evaluations, the last at max_steps")
    batch_size: int = Field(1024, gt=0, description="batch size for generation and val/loss")


class TrackingConfig(_Strict):
    """How a run is mirrored to W&B. Not part of the run id: it does not change the science."""

    wandb: Literal["auto", "online", "offline", "disabled"] = "auto"
    project: str = "rhmscale"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = Field(default_factory=list)
    n_table_samples: int = Field(8, ge=0, description="generated samples logged as a table")


class RunConfig(_Strict):
    grammar: GrammarConfig = Field(default_factory=GrammarConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    seed: int = Field(0, ge=0, description="seed of data sampling, initialisation and training")

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

    def science_dict(self) -> dict[str, Any]:
        """Everything that changes the result; tracking is left out."""
        return self.model_dump(mode="json", exclude={"tracking"})

    def run_id(self) -> str:
        return run_id(self)

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> values, for W&B config and table columns."""
        return flatten(self.model_dump(mode="json"))


def run_id(config: RunConfig) -> str:
    """Short stable hash of the canonical JSON of what changes the science."""
    canonical = json.dumps(config.science_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def valid_keys(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    """All dotted leaf keys of a config model."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(valid_keys(ann, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _nearest(key: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.0)
    return close[0] if close else choices[0]


def check_keys(tree: dict[str, Any], where: str = "config") -> None:
    """Raise UserError naming the nearest valid key for any unknown dotted key in tree."""
    keys = valid_keys()
    sections = {k.split(".")[0] for k in keys}
    for key in flatten(tree):
        if key in keys:
            continue
        # A section given a scalar ("grammar: 3") or a leaf given a mapping is also wrong.
        if key in sections:
            raise UserError(f"{where}: '{key}' is a section; give its fields, e.g. '{key}.…'")
        raise UserError(
            f"{where}: unknown key '{key}'; did you mean '{_nearest(key, keys)}'? "
            f"(valid keys: {', '.join(keys)})"
        )


def parse_override(text: str) -> tuple[str, Any]:
    """'grammar.v=32' -> ('grammar.v', 32); the value is parsed as YAML (numbers, bools, lists)."""
    if "=" not in text:
        raise UserError(f"override '{text}' is not of the form key=value (e.g. grammar.v=32)")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise UserError(f"override '{text}': value is not valid YAML ({exc})") from None
    return key, value


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"cannot set '{key}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of config sections, not {type(data).__name__}")
    return data


def merge_overrides(base: dict[str, Any] | None, overrides: list[str] | None) -> dict[str, Any]:
    """A copy of a partial config tree with dotted overrides applied."""
    tree: dict[str, Any] = json.loads(json.dumps(base or {}))  # deep copy
    for text in overrides or []:
        key, value = parse_override(text)
        set_dotted(tree, key, value)
    return tree


def build_config(
    base: dict[str, Any] | None = None, overrides: list[str] | None = None, where: str = "config"
) -> RunConfig:
    """Merge a partial config tree with dotted overrides and validate it into a RunConfig."""
    tree = merge_overrides(base, overrides)
    check_keys(tree, where)
    return validate_config(tree, where)


def build_grammar_config(
    base: dict[str, Any] | None = None, overrides: list[str] | None = None, where: str = "config"
) -> GrammarConfig:
    """Only the grammar section (for commands that need no data or model)."""
    tree = merge_overrides(base, overrides)
    check_keys(tree, where)
    try:
        return GrammarConfig.model_validate(tree.get("grammar", {}))
    except ValidationError as exc:
        raise UserError(f"{where}: grammar.{format_validation_error(exc)}") from None


def validate_config(tree: dict[str, Any], where: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise UserError(f"{where}: {format_validation_error(exc)}") from None


def format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(lines)
