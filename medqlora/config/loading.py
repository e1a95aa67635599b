"""A config from a file, a preset name and ``--set`` overrides, validated into one ``KitConfig``; every problem
(at most twenty) reported with its key, file and line, the allowed values or range, and the closest valid key
for a misspelled one.

    python -c "from medqlora.config import load_config; print(load_config('smollm2_pubmedqa_cpu').model)"
"""

from __future__ import annotations

import difflib
import types
import typing
import unicodedata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from ..errors import ConfigError
from ..secrets import printable
from ..shown_paths import quoted_path
from .base import DEFAULT_CONFIG, KEY_ALIASES, PATH_SHOWN, PRESETS_DIR, YAML_MAX_BYTES, has_control_characters
from .error_places import where_given
from .kit import _LIST_ITEMS, KitConfig
from .value_hints import null_hint, quote_hint
from .yaml_reader import load_yaml, read_yaml_file

# ---------------------------------------------------------------- loading


def resolve_config_path(name: str | Path | None) -> Path:
    """A path, or the name of a preset in config/presets/ (with or without .yaml)."""
    if name is None:
        return DEFAULT_CONFIG
    shown = printable(name, PATH_SHOWN)
    if not str(name).strip():
        raise ConfigError("--config is empty: expected a YAML file or preset name.")
    if has_control_characters(str(name)):
        raise ConfigError(f"--config {shown}: a file name with control characters; expected a YAML file or preset "
                          "name.")
    path = Path(name)
    if path.is_dir():
        raise ConfigError(f"--config {shown}: is a directory, expected a YAML file or preset name.")
    if path.is_file():
        if path.suffix.lower() in DATA_FILE_SUFFIXES:
            raise ConfigError(f"--config {shown}: is a data file ({path.suffix.lower()}), not a config. --config takes "
                              "a YAML file of sections (model:, data:, training:, ...) or a preset name; a data file "
                              "goes in data.datasets, e.g. --set \"data.datasets=[{source: "
                              f"{printable(path, 200)}, format: instruction}}]\" (with its format).")
        return path
    for candidate in (PRESETS_DIR / path.name, PRESETS_DIR / f"{path.name}.yaml"):
        if candidate.is_file():
            return candidate
    if path.exists():  # a device, a pipe, a link to one
        raise ConfigError(f"--config {shown}: is not a regular file, expected a YAML file or preset name.")
    presets = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
    close = difflib.get_close_matches(path.stem, presets, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(
        f"Config file or preset {quoted_path(name)} not found.{hint} Available presets: {', '.join(presets)}."
    )


DATA_FILE_SUFFIXES = {".jsonl", ".csv", ".tsv", ".parquet", ".arrow"}  # never a config; .json may hold one


def override_items(overrides: object) -> list[str]:
    """``load_config``'s overrides as a list of ``section.key=value`` strings: one string is one override (it was
    iterated as its characters); a mapping, or anything that is not a list of strings, is refused with the form
    to write (a dict was iterated as its keys and reported as a --set without a value)."""
    if overrides is None:
        return []
    if isinstance(overrides, str):
        return [overrides]
    example = "['training.max_steps=60']"
    if isinstance(overrides, dict):
        example = printable(repr([f"{key}={value}" for key, value in overrides.items()]), 200)
    elif isinstance(overrides, (list, tuple)) and all(isinstance(item, str) for item in overrides):
        return list(overrides)
    raise ConfigError(f"load_config(overrides=...): got {printable(type(overrides).__name__)} "
                      f"{printable(repr(overrides), 100)}; overrides must be a list of \"section.key=value\" strings "
                      f"(as --set takes them), e.g. {example}.")


def load_config(path: str | Path | None = None, overrides: list[str] | str | None = None) -> KitConfig:
    """Read a YAML config (or preset), apply ``section.key=value`` overrides (a list of them, or one string) and
    validate it."""
    overrides = override_items(overrides)
    path = resolve_config_path(path)
    raw, lines = read_yaml_file(path, "Config file")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        data_file = " (a list of rows is a data file: it goes in data.datasets)" if isinstance(raw, list) else ""
        raise ConfigError(f"{printable(path, PATH_SHOWN)}: the top level must be a mapping of sections (model:, lora:, data:, "
                          f"...){data_file}.")
    typed: dict[tuple, str] = {}
    for item in overrides:
        key = _apply_override(raw, item)
        if key is None:
            continue
        _refuse_replaced_override(key, item, typed)
        lines = {loc: line for loc, line in lines.items() if loc[: len(key)] != key}
        lines[key] = f"--set {printable('.'.join(str(k) for k in key))}"
        typed[key] = item.partition("=")[2]
    return validate(raw, source=printable(path, PATH_SHOWN), lines=lines, typed=typed)


def _refuse_replaced_override(key: tuple, item: str, earlier: dict[tuple, str]) -> None:
    """A --set of a whole list or section after a --set into it, or a --set of one key twice with two values, would
    drop the earlier one without a word."""
    value = item.partition("=")[2]
    if key in earlier and earlier[key].strip() != value.strip():
        dotted = printable(".".join(str(k) for k in key), 120)
        raise ConfigError(f"--set {dotted} is given twice, with two values ({printable(earlier[key].strip(), 60)}, then "
                          f"{printable(value.strip(), 60)}): one would be dropped. Keep the --set with the value meant.")
    for given in earlier:
        if len(given) > len(key) and given[:len(key)] == key:
            whole, inner = (printable(".".join(str(k) for k in k_), 120) for k_ in (key, given))
            raise ConfigError(f"--set {whole}=... replaces the whole value, so the --set {inner}=... before it would be "
                              f"dropped. Put --set {whole}=... first and --set {inner}=... after it (or write that "
                              f"value inside the new {whole}).")


MAX_PROBLEMS = 20  # a hostile file can hold thousands: the first ones say what to fix


def validate(raw: dict[str, Any], source: str = "<config>", lines: dict | None = None,
             typed: dict[tuple, str] | None = None) -> KitConfig:
    """Validate a raw config; ``lines`` maps key paths to a line number (or to the --set that gave them),
    ``typed`` the key paths of --set overrides to the value as typed."""
    try:
        return KitConfig.model_validate(raw)
    except ValidationError as err:
        errors = _one_error_per_union(err.errors())
        problems = [described if _NO_SPACE in described else described + _value_hint(e, typed or {})
                    for e in errors[:MAX_PROBLEMS] for described in [_describe(e, source, lines or {})]]
        if len(errors) > MAX_PROBLEMS:
            problems.append(f"... and {len(errors) - MAX_PROBLEMS} more")
        raise ConfigError("Invalid configuration:\n  - " + "\n  - ".join(problems)) from None


def revalidate(cfg: KitConfig, source: str) -> KitConfig:
    """``cfg`` validated again as a whole, as load_config would read it: a setting changed by assignment is checked
    alone (its section's rules), never against the other sections (training.method against the data format).
    The settings never given stay unset, so what the run says of given settings stays true; a list or mapping
    edited in place (cfg.lora.target_modules.append(...)) and a setting assigned inside a section never given
    (cfg.grpo.beta = 0.1) count as given, as assignment of the whole value does."""
    return validate(given_settings(cfg), source=source)


def given_settings(section: BaseModel) -> dict[str, Any]:
    """The settings of ``section`` that were given, as plain values: those assigned or read from the file
    (pydantic's fields set), the sections holding any, and the lists and mappings whose content no longer is
    their default (an edit in place is no assignment, and pydantic does not see it)."""
    given: dict[str, Any] = {}
    for name, field in type(section).model_fields.items():
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            inner = given_settings(value)
            if inner or name in section.model_fields_set:
                given[name] = inner
        elif name in section.model_fields_set or (isinstance(value, (list, dict))
                                                  and value != field.get_default(call_default_factory=True)):
            given[name] = _plain(value)
    return given


def _plain(value: Any) -> Any:
    """A setting's value as YAML would give it: sections in a list by their given settings."""
    if isinstance(value, BaseModel):
        return given_settings(value)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return to_jsonable_python(value)


def _one_error_per_union(errors: list[dict]) -> list[dict]:
    """A value that fits no member of a union setting (static_cache: bool | "auto") is reported by pydantic once per
    member, under the member's name (``static_cache.bool``, ``static_cache.literal['auto']``): one error for the
    setting instead, naming the values it takes."""
    merged: list[dict] = []
    for error in errors:
        loc = tuple(error["loc"])
        choices = _union_choices(loc[:-1]) if len(loc) > 1 and isinstance(loc[-1], str) else None
        if choices is None:
            merged.append(error)
        elif not any(tuple(m["loc"]) == loc[:-1] for m in merged):
            merged.append({"type": "union_choice", "loc": loc[:-1], "input": error.get("input"),
                           "msg": f"expected {choices}"})
    return merged


def _union_choices(loc: tuple) -> str | None:
    """'true, false or auto' for the setting at ``loc`` when its type is a union of several members, else None."""
    model = _model_at(loc[:-1])
    field = model.model_fields.get(loc[-1]) if model is not None and isinstance(loc[-1], str) else None
    if field is None or typing.get_origin(field.annotation) not in (typing.Union, types.UnionType):
        return None
    names: list[str] = []
    for member in typing.get_args(field.annotation):
        if typing.get_origin(member) is typing.Literal:
            names += [str(v).lower() if isinstance(v, bool) else str(v) for v in typing.get_args(member)]
        elif typing.get_origin(member) is typing.Annotated and typing.get_args(member)[0] in _MEMBER_NAMES:
            names += [f"{name} (allowed: {_bounds(typing.get_args(member)[1:])})"
                      for name in _MEMBER_NAMES[typing.get_args(member)[0]]]
        elif member in _MEMBER_NAMES:
            names += _MEMBER_NAMES[member]
        else:  # a section or a list: the last part of an error's loc is one of its own keys, not a member's name
            return None
    return ", ".join(names[:-1]) + f" or {names[-1]}"


def _bounds(metadata: tuple) -> str:
    """'0 < value <= 65536' from the constraints of an Annotated union member (a FieldInfo's metadata)."""
    found = {name: getattr(c, name) for info in metadata for c in getattr(info, "metadata", [info])
             for name in ("gt", "ge", "lt", "le") if getattr(c, name, None) is not None}
    low = f"{found['gt']} < " if "gt" in found else f"{found['ge']} <= " if "ge" in found else ""
    high = f" < {found['lt']}" if "lt" in found else f" <= {found['le']}" if "le" in found else ""
    return f"{low}value{high}"


_MEMBER_NAMES: dict[Any, list[str]] = {bool: ["true", "false"], type(None): ["null"], int: ["a whole number"],
                                       float: ["a number"], str: ["text"]}


def _apply_override(raw: dict[str, Any], item: str) -> tuple | None:
    """Set one section.key=value in the raw config; returns the key path, or None where the path goes into a
    required value the config lacks (validation then says it is required)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set '{printable(item)}': expected section.key=value, e.g. --set training.max_steps=60.")
    if len(value) > YAML_MAX_BYTES:
        raise ConfigError(f"--set {printable(key)}: the value is over {YAML_MAX_BYTES // 2**20} MiB.")
    parsed = load_yaml(value, f"--set {printable(key)}", lines=False, lenient=True)[0] if value.strip() else None
    shown = printable(key)
    parts = key.strip().split(".")
    node: Any = raw
    model: type[BaseModel] | None = KitConfig
    for depth, part in enumerate(parts):
        if not isinstance(node, (dict, list)):
            where = ".".join(parts[:depth])
            raise ConfigError(f"--set {shown}: '{printable(where)}' holds the value {printable(repr(node), 100)}, "
                              "not a section or list.")
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {shown}: '{printable(part)}' is not an index of that list "
                                  f"(0..{len(node) - 1}).")
            part_key: Any = int(part)
        else:
            part_key = part
            if model is not None and part not in model.model_fields:
                hint = _did_you_mean(part, list(model.model_fields))
                raise ConfigError(f"--set {shown}: unknown key '{printable(part)}'.{hint}")
        if depth == len(parts) - 1:
            node[part_key] = parsed
            return tuple(int(p) if p.isdigit() else p for p in parts)
        if not isinstance(node, list):
            if part_key not in node:
                default = _default_value(model, part)
                if default is _REQUIRED:
                    return None  # nothing to reach into: validation names the missing key
                node[part_key] = default
            node = node[part_key]
            model = _submodel(model, part) if model is not None else None
        else:
            node = node[part_key]
            model = _LIST_ITEMS.get(parts[depth - 1])


_REQUIRED = object()  # a required field with no default: an override cannot reach into it


def _default_value(model: type[BaseModel] | None, field: str) -> Any:
    """The schema default of a field as plain data, so an override can reach into it (e.g. a list item); a
    required section is an empty one (its own required keys are then named), other required fields _REQUIRED."""
    if model is None or field not in model.model_fields:
        return {}
    if model.model_fields[field].is_required():
        return {} if _submodel(model, field) is not None else _REQUIRED
    default = model.model_fields[field].get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        return {}  # an empty section validates to the same defaults
    if isinstance(default, list):
        return [d.model_dump() if isinstance(d, BaseModel) else d for d in default]
    return {} if default is None else default


def _submodel(model: type[BaseModel], field: str) -> type[BaseModel] | None:
    annotation = model.model_fields[field].annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _describe(error: dict, source: str, lines: dict) -> str:
    loc = tuple(error["loc"])
    dotted = printable(".".join(str(p) for p in loc), 120) or "(top level)"
    where = where_given(loc, error["msg"], source, lines)
    if error["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        key = str(loc[-1])
        meant, _, value = key.partition(":")
        if parent and value and meant.strip() in parent.model_fields:  # {max_steps:5}: YAML needs ': '
            return (f"{where}: unknown key '{dotted}': YAML reads {printable(key, 60)!r} as one key with no value, "
                    f"{_NO_SPACE}. Write {printable(meant.strip(), 40)}: {printable(value.strip(), 40)} (in braces: "
                    f"{{{printable(meant.strip(), 40)}: {printable(value.strip(), 40)}}}).")
        hint = _did_you_mean(key, list(parent.model_fields)) if parent else ""
        return f"{where}: unknown key '{dotted}'.{hint}"
    if error["type"] == "missing":
        return f"{where}: '{dotted}' is required."
    if not loc and error["type"] == "value_error":  # a rule across sections (training.method and its data)
        return f"{where}: {error['msg'].removeprefix('Value error, ')}."
    value = error.get("input")
    shown = "" if isinstance(value, dict) else f" (got {printable(repr(value), 100)})"
    allowed = _allowed_range(loc) if error["type"] in _NUMBER_ERRORS else ""
    return f"{where}: '{dotted}': {_said(error)}{shown}{allowed}."


_NO_SPACE = "for want of a space after the colon"


def _said(error: dict) -> str:
    """pydantic's message, in the words of the value given: a length limit checked after a text setting's own
    validator (output.run_name) is pydantic's generic one, 'at most 200 items', said here of the text's characters."""
    ctx = error.get("ctx") or {}
    if error["type"] == "too_long" and isinstance(error.get("input"), str) and "max_length" in ctx:
        return f"Text should have at most {ctx['max_length']} characters, not {len(error['input'])}"
    return error["msg"]


_NUMBER_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number",
                  "int_parsing_size", "int_from_float", "int_parsing", "float_parsing", "int_type", "float_type"}


def _allowed_range(loc: tuple) -> str:
    """'; allowed: 0 < value <= 1000' for a numeric field with bounds, from the schema itself."""
    model = _model_at(loc[:-1]) if loc else None
    field = model.model_fields.get(loc[-1]) if model is not None and isinstance(loc[-1], str) else None
    if field is None:
        return ""
    low = high = ""
    for rule in field.metadata:
        for attr, text in (("gt", "{} <"), ("ge", "{} <=")):
            if getattr(rule, attr, None) is not None:
                low = text.format(getattr(rule, attr))
        for attr, text in (("lt", "< {}"), ("le", "<= {}")):
            if getattr(rule, attr, None) is not None:
                high = text.format(getattr(rule, attr))
    if not (low or high):
        return ""
    if loc[-1] == "max_steps":
        low = "-1 (train for num_epochs), or 1 <="
    return f"; allowed: {' '.join(part for part in (low, 'value', high) if part)}"


def _value_hint(error: dict, typed: dict[tuple, str]) -> str:
    """What YAML made of a value the setting does not take (text read as a number, ``~`` read as null)."""
    depth, field = _setting_of(tuple(error["loc"]))
    return quote_hint(error, typed) + null_hint(error, typed, field, depth)


def _setting_of(loc: tuple) -> tuple[int, FieldInfo | None]:
    """How many parts of ``loc`` name the setting (the rest: an element of its list or mapping,
    ``lora.target_modules`` of ``lora.target_modules.1``), and the setting's field (None where none is found)."""
    for depth in range(len(loc), 0, -1):
        model = _model_at(loc[:depth - 1])
        name = loc[depth - 1]
        if model is not None and isinstance(name, str) and name in model.model_fields:
            return depth, model.model_fields[name]
    return len(loc), None


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] | None = KitConfig
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        if part in _LIST_ITEMS:
            model = _LIST_ITEMS[part]
            continue
        if part not in model.model_fields:
            return None
        model = _submodel(model, part)
    return model


def _did_you_mean(word: str, choices: list[str]) -> str:
    if word in KEY_ALIASES and KEY_ALIASES[word] in choices:
        return f" Did you mean '{KEY_ALIASES[word]}'?"
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f" Did you mean '{close[0]}'?{_not_latin(word)}"
    return f" Valid keys: {', '.join(choices)}." if choices else ""


def _not_latin(word: str) -> str:
    """The characters of a key outside ASCII, named: a key pasted from a PDF or a web page may hold a Cyrillic а that
    reads as the Latin a, and the message would show two keys that look the same."""
    foreign = [(at, char) for at, char in enumerate(word, 1) if not char.isascii()]
    if not foreign:
        return ""
    named = ", ".join(f"character {at} is U+{ord(char):04X} {unicodedata.name(char, 'unnamed')}"
                      for at, char in foreign[:3])
    what = "a character that only looks like a Latin letter" if len(foreign) == 1 else \
        f"{len(foreign)} characters that only look like Latin letters"
    return f" The key holds {what} ({named}{', ...' if len(foreign) > 3 else ''}): type it again rather than paste it."
