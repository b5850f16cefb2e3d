"""Reading a scenario: YAML, `--set` overrides, validation, and one-line errors naming the field."""

from __future__ import annotations

import copy
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from aif_sim.errors import InputError
from aif_sim.scenario.pipelines import Cached, Call, Parallel
from aif_sim.scenario.schema import Scenario

Override = tuple[str, Any, str]  # dotted path, value, the option that gave it ("--set", "--param", "--seed")


def parse_overrides(items: list[str] | None, option: str = "--set") -> list[Override]:
    """Parse `dotted.path=value` items of a command-line option; values are YAML scalars or flow collections."""
    overrides = []
    for item in items or []:
        path, sep, raw = item.partition("=")
        if not sep or not path.strip():
            raise InputError(f"{option} {item}: expected dotted.path=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise InputError(f"{option} {item}: value is not valid YAML ({exc.__class__.__name__})") from None
        overrides.append((path.strip(), value, option))
    return overrides


def set_dotted(data: dict[str, Any], override: Override) -> None:
    """Apply one override: `data[a][b][c] = value` for 'a.b.c', creating mappings on the way (list items by index)."""
    dotted, value, option = override
    if dotted == "pipelines" and isinstance(value, list) and isinstance(data.get("pipelines"), list):
        value = _own_pipelines(data["pipelines"], value)
    keys = dotted.split(".")
    node: Any = data
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise InputError(f"{option} {dotted}: {'.'.join(keys[:depth])} has no item {key!r}")
            index: Any = int(key)
        elif isinstance(node, dict):
            index = key
            if not last and not isinstance(node.get(key), (dict, list)):
                node[key] = {}
        else:
            raise InputError(f"{option} {dotted}: {'.'.join(keys[:depth])} is not a mapping")
        if last:
            node[index] = value
        else:
            node = node[index]


def _own_pipelines(written: list[Any], chosen: list[Any]) -> list[Any]:
    """Pipelines chosen by name (`--pipelines`, `--set pipelines=[...]`): a name the scenario defines (`{name, steps}`)
    is that definition; any other is a shipped design's name."""
    defined = {entry["name"]: entry for entry in written if isinstance(entry, dict) and isinstance(entry.get("name"), str)}
    return [copy.deepcopy(defined[name]) if isinstance(name, str) and name in defined else name for name in chosen]


def load_scenario(path: str | Path, overrides: list[Override] | None = None) -> Scenario:
    """Read, override and validate a scenario file; raise InputError with one line on any problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"{path}: cannot read scenario file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise InputError(f"{path}: {where}invalid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of scenario fields at the top level")
    original = copy.deepcopy(data)
    for override in overrides or []:
        set_dotted(data, override)
    try:
        return validate_scenario(data, source=str(path), base_dir=path.resolve().parent)
    except InputError as error:
        if overrides and _valid(original, path.resolve().parent):
            raise InputError(_blame(str(error).removeprefix(f"{path}: "), overrides)) from None
        raise


def _valid(data: dict[str, Any], base_dir: Path) -> bool:
    try:
        Scenario.model_validate(data, context={"base_dir": base_dir})
    except ValidationError:
        return False
    return True


def _blame(message: str, overrides: list[Override]) -> str:
    """The message of an error that only the overrides cause, prefixed with the override nearest its field."""
    field = message.split(":", 1)[0]

    def shared(override: Override) -> int:
        a, b = override[0].split("."), field.split(".")
        return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

    dotted, value, option = max(reversed(overrides), key=shared)
    if option in ("--set", "--param"):
        shown = f"{dotted}={value}"
    else:
        shown = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return f"{option} {shown}: {message}"


def validate_scenario(data: dict[str, Any], source: str = "<scenario>", base_dir: Path | None = None) -> Scenario:
    """Validate a scenario mapping; raise InputError naming the source, the field path and what was
    expected. An unknown key is reported before anything else."""
    try:
        return Scenario.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        errors = sorted(exc.errors(), key=_rank)
        error = errors[0]
        field, message = _field_path(error["loc"]), _describe(error, data)
        placed = _PLACED.match(message) if error["type"] == "value_error" else None
        if placed:  # a check across fields names the field it found wrong, from where it looked
            field = f"{field}.{placed.group(1)}" if error["loc"] else placed.group(1)
            message = placed.group(2)
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InputError(f"{source}: {field}: {message}{more}") from None


_PLACED = re.compile(r"^([A-Za-z_][\w]*(?:\.[\w]+)*): (.*)$", re.DOTALL)


def _rank(error: dict[str, Any]) -> tuple[bool, bool]:
    """Unknown keys first; last, a mapping checked against a scalar member of a union (the other member explains it)."""
    return error["type"] != "extra_forbidden", error["type"].endswith("_type") and isinstance(error.get("input"), dict)


def _field_path(loc: tuple[Any, ...]) -> str:
    """Dotted field path of a pydantic error location, without the tags pydantic inserts for unions."""
    parts: list[str] = []
    for index, part in enumerate(loc):
        previous = parts[-1] if parts else None
        if isinstance(part, str) and (part.startswith(("function-", "tagged-union")) or part == "int"):
            continue
        if previous in _UNION_FIELDS and part in _UNION_TAGS:
            continue
        if part in _FAULT_KINDS and len(parts) >= 2 and parts[-2] == "faults":
            continue
        if part in _STEP_FORMS and index >= 2 and isinstance(loc[index - 1], int) and loc[index - 2] in ("steps", "parallel"):
            continue
        parts.append(str(part))
    return ".".join(parts) or "(top level)"


_UNION_FIELDS = ("arrival", "latency", "miss_latency", "candidates")
_UNION_TAGS = {"poisson", "diurnal", "bursty", "trace", "constant", "exponential", "lognormal", "gamma", "empirical", "profile"}
_FAULT_KINDS = {"cache_flush", "nearline_outage", "stage_slowdown", "node_loss"}
_STEP_FORMS = {"call": Call, "cached": Cached, "parallel": Parallel}  # the tags of a pipeline step's forms


def _describe(error: dict[str, Any], data: dict[str, Any]) -> str:
    """One phrase for a pydantic error: what was expected and what was given."""
    kind = error["type"]
    if kind == "extra_forbidden":
        key = str(error["loc"][-1])
        close = difflib.get_close_matches(key, _allowed_keys(error["loc"][:-1], data), n=1, cutoff=0.6)
        return "unknown key" + (f"; did you mean {close[0]}?" if close else "")
    if kind == "missing":
        return "required field is missing"
    if kind == "union_tag_not_found":
        return _missing_tag(error["loc"], data, error["ctx"]["discriminator"].strip("'"))
    message = error["msg"].removeprefix("Value error, ")
    if kind in ("value_error", "union_tag_invalid"):
        return message
    return f"{message} (got {error['input']!r})"


def _missing_tag(loc: tuple[Any, ...], data: Any, tag: str) -> str:
    """A union member written without its tag: name the tag, its values, and the form meant when the value is a tag."""
    annotation, node = _annotation_at(loc, data)
    members = [m for m in typing.get_args(_strip(annotation)) if isinstance(m, type) and issubclass(m, BaseModel) and tag in m.model_fields]
    values = [str(v) for m in members for v in typing.get_args(m.model_fields[tag].annotation)]
    message = f"{tag}: required key is missing; expected {tag}: one of {', '.join(values)}"
    if isinstance(node, dict) and len(node) == 1 and next(iter(node)) in values:
        name, fields = next(iter(node.items()))
        inner = "".join(f", {k}: {v}" for k, v in fields.items()) if isinstance(fields, dict) else ""
        message += f" (write {{{tag}: {name}{inner}}}, not {{{name}: ...}})"
    return message


def _allowed_keys(loc: tuple[Any, ...], data: Any) -> list[str]:
    """Field names of the model at an error location (following the input through unions by their tag)."""
    model = _model_of(*_annotation_at(loc, data))
    return list(_fields_of(model)) if model is not None else []


def _fields_of(model: type[BaseModel]) -> dict[str, Any]:
    """A model's fields by the key a scenario writes (a field's alias where it has one)."""
    return {field.alias or name: field for name, field in model.model_fields.items()}


def _annotation_at(loc: tuple[Any, ...], data: Any) -> tuple[Any, Any]:
    """The schema's annotation at an error location, and the input there (following unions by their tag)."""
    annotation: Any = Scenario
    node = data
    for part in loc:
        model = _model_of(annotation, node)
        if model is None and part in _STEP_FORMS:
            annotation = _STEP_FORMS[part]  # the form of a step, by the tag pydantic puts in the location
            continue
        if model is not None and isinstance(part, str) and part not in _fields_of(model) and model.model_config.get("extra") == "allow":
            extra = typing.get_type_hints(model).get("__pydantic_extra__")  # a key of the user's naming (a cache)
            annotation = typing.get_args(extra)[1] if typing.get_args(extra) else Any
            node = node.get(part) if isinstance(node, dict) else None
            continue
        if model is not None and isinstance(part, str) and part not in _fields_of(model):
            continue  # a union tag pydantic puts in the location
        if model is not None and isinstance(part, str):
            annotation = _fields_of(model)[part].annotation
            node = node.get(part) if isinstance(node, dict) else None
        elif isinstance(part, (int, str)) and isinstance(node, (list, dict)):
            args = [a for a in typing.get_args(_strip(annotation)) if a is not type(None)]
            annotation = args[-1] if args else Any
            node = (
                node[part]
                if isinstance(node, list) and isinstance(part, int) and part < len(node)
                else (node.get(part) if isinstance(node, dict) else None)
            )
    return annotation, node


def _strip(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _model_of(annotation: Any, node: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation stands for at this input (a union picks the member whose tag matches)."""
    annotation = _strip(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [_model_of(a, node) for a in typing.get_args(annotation)]
        members = [m for m in members if m is not None]
        for member in members:
            for tag in ("kind", "dist"):
                field = member.model_fields.get(tag)
                if field is not None and isinstance(node, dict) and node.get(tag) in typing.get_args(field.annotation):
                    return member
        return members[0] if len(members) == 1 else None
    return None
