"""Reading run configs: YAML files, dotted overrides (`grammar.v=32`) and validation, with
errors that say what to change (an unknown key names the nearest valid one)."""

from __future__ import annotations

import difflib
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from rhmscale.config import GrammarConfig, RunConfig, flatten, valid_keys
from rhmscale.errors import DamagedFile, UserError
from rhmscale.store.reading import decode

M = TypeVar("M", bound=BaseModel)
# A config, sweep or study file is a few KB. YAML aliases repeat a node without copying it, so
# a small file can stand for a billion nodes ("billion laughs"), built only when the tree is
# copied or validated: the file's size and its size with aliases expanded are capped before.
MAX_YAML_CHARS = 1_000_000
MAX_YAML_NODES = 100_000


class _BoundedLoader(yaml.SafeLoader):
    """yaml.safe_load's loader that refuses a document whose expanded size is over the cap."""

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        expanded_size(node)
        return node


def expanded_size(root: yaml.Node) -> int:
    """How many nodes the document has once its aliases are expanded; a YAMLError past
    MAX_YAML_NODES or for an alias inside its own anchor (an endless document)."""
    sizes: dict[int, int] = {}  # id(node) -> its expanded size, each node counted once
    entered: set[int] = set()  # the nodes on the path from the root
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if children_done:
            entered.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[id(node)] > MAX_YAML_NODES:
                raise yaml.YAMLError(
                    f"its aliases expand it to more than {MAX_YAML_NODES:,} values; "
                    "write it out without so many aliases"
                )
            continue
        if id(node) in entered:
            raise yaml.YAMLError("an alias refers to a node that contains it (endless)")
        entered.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in children)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def safe_load(text: str, where: str) -> Any:
    """yaml.safe_load, bounded (see MAX_YAML_NODES); a UserError that names `where`."""
    if len(text) > MAX_YAML_CHARS:
        raise UserError(f"{where} has more than {MAX_YAML_CHARS:,} characters")
    try:
        return yaml.load(text, Loader=_BoundedLoader)
    except yaml.YAMLError as exc:
        raise UserError(f"{where} is not valid YAML: {exc}") from None
    except ValueError:  # Python reads no integer of more than 4,300 digits
        raise UserError(
            f"{where} holds a number of thousands of digits: no key takes one"
        ) from None
    except RecursionError:
        raise UserError(f"{where} is nested too deeply") from None


def did_you_mean(key: str, choices: list[str]) -> str:
    """ "; did you mean 'x'?" when a choice is close to `key`, else ''."""
    close = difflib.get_close_matches(key, choices, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


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
            f"{where}: unknown key '{key}'{did_you_mean(key, keys)} (valid keys: {', '.join(keys)})"
        )


def parse_override(text: str) -> tuple[str, Any]:
    """'grammar.v=32' -> ('grammar.v', 32); the value is parsed as YAML (numbers, bools, lists)."""
    if "=" not in text:
        raise UserError(f"override '{text}' is not of the form key=value (e.g. grammar.v=32)")
    key, raw = text.split("=", 1)
    key = key.strip()
    shown = text if len(text) <= 80 else f"{text[:60]}..."
    return key, safe_load(raw, f"override '{shown}': the value") if raw.strip() else ""


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
        with open(path, "rb") as file:
            raw = file.read(4 * MAX_YAML_CHARS + 1)  # a larger file is refused, not read whole
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    try:
        text = decode(path, raw)
    except DamagedFile as exc:  # a spec saved in Latin-1, a binary file given by mistake
        raise exc.with_remedy("save the file as UTF-8") from None
    data = safe_load(text, str(path))
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
    return validated(GrammarConfig, tree.get("grammar", {}), f"{where}: grammar.")


def validate_config(tree: dict[str, Any], where: str = "config") -> RunConfig:
    return validated(RunConfig, tree, f"{where}: ")


def validated(model: type[M], data: Any, where: str) -> M:
    """model.model_validate(data), its errors as one UserError: `where` + what to change."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{where}{format_validation_error(exc, model)}") from None


def format_validation_error(exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "less_than_equal":  # a key's upper bound (rhmscale.bounds says why)
            msg = f"must be at most {err['ctx']['le']:,} (got {err['input']!r})"
        if err["type"] == "extra_forbidden" and model is not None:
            names = field_names_at(model, err["loc"][:-1])
            msg = f"not a key here{did_you_mean(str(err['loc'][-1]), names)}" + (
                f" (keys: {', '.join(names)})" if names else ""
            )
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(lines)


def field_names_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names of the model found at `loc` inside `model` (list indices and mapping
    keys are stepped over); [] where no model is found."""
    for part in loc:
        if not isinstance(part, str) or part not in model.model_fields:
            continue  # a list index, or a mapping's key: the same model further down
        found = model_in(model.model_fields[part].annotation)
        if found is None:
            return []
        model = found
    return [field.alias or name for name, field in model.model_fields.items()]


def model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next(filter(None, (model_in(arg) for arg in typing.get_args(annotation))), None)


def key_listing(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[dict[str, Any]]:
    """Every dotted leaf key of a config model, in order, read off the model's fields (so it
    cannot drift): its role (key_roles), whether it may differ between the members of a pack,
    its default (JSON) and its description."""
    from pydantic_core import PydanticUndefined

    from rhmscale.config import key_roles

    roles = key_roles(model) if not prefix else {}
    rows: list[dict[str, Any]] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows += key_listing(ann, f"{prefix}{name}.")
            continue
        default = field.get_default(call_default_factory=True)
        if default is PydanticUndefined:
            default = None
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        rows.append(
            {
                "key": f"{prefix}{name}",
                "role": extra.get("role"),
                "per_member": bool(extra.get("per_member")),
                "default": json.loads(json.dumps(default, default=str)),
                "description": field.description or choices(ann),
            }
        )
    if roles:  # the top call: the same keys, in the same order, as key_roles
        assert [row["key"] for row in rows] == list(roles), "key_listing drifted from key_roles"
    return rows


def choices(annotation: Any) -> str:
    """'one of: a, b' for a Literal field without a description, else ''."""
    import typing

    if typing.get_origin(annotation) is typing.Literal:
        return "one of: " + ", ".join(map(str, typing.get_args(annotation)))
    return ""
