"""Validated config objects with errors that name the field and the fix.

Every config in the package derives from :class:`StrictConfig`: unknown keys
are rejected with the nearest valid names, and pydantic's errors are turned
into one readable :class:`ConfigError` that names the place of each (sections
nest, so `multitask[2].optim: lr: ...` is found by pydantic, not by hand).
"""
from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError


# Names that become folders (run, search, job, task labels): one path component,
# never '..', never absolute.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
NAME_MAX_LENGTH = 100


def check_name(name: str, what: str = "name") -> str:
    """`name` if it is safe as one folder under a storage path, else a ConfigError."""
    if not isinstance(name, str) or not re.match(NAME_PATTERN, name) or len(name) > NAME_MAX_LENGTH:
        raise ConfigError(f"{what} {name!r}: expected letters, digits, '_', '.' or '-', starting with a letter "
                          f"or digit, at most {NAME_MAX_LENGTH} characters (it becomes a folder under the storage "
                          "path: no '/', no '..')")
    return name


def name_from_path(path) -> str:
    """A default run name from a file's stem, made safe by :func:`check_name`'s rules."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(path).stem).lstrip("._-")[:NAME_MAX_LENGTH]
    return cleaned or "run"


class StrictConfig(BaseModel):
    # inf / nan are never a valid setting (an lr of .inf would only fail later, as a NaN loss)
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise ConfigError(at(type(self).__name__, describe(err, type(self)))) from None

    # Marks this __init__ as pydantic's own, so nested sections are validated without it and
    # an error keeps its whole location (pydantic's RootModel does the same).
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str | None = None, path: str = ""):
        """Build from a plain mapping (e.g. a YAML section). Errors start with `where` (a file,
        an entry; default the class name), or, for a section of a larger file, with its `path`
        there (path `multitask[2]`: `multitask[2].optim: lr: ...`)."""
        try:
            return cls.model_validate({} if data is None else data)
        except ValidationError as err:
            raise ConfigError(at(where or ("" if path else cls.__name__), describe(err, cls, path))) from None

    @classmethod
    def from_yaml(cls, path: str | Path):
        """Build from a YAML file; errors name the file."""
        return cls.from_dict(read_yaml_mapping(path), where=str(path))

    def replace(self, **changes: Any):
        """A copy with some fields changed, validated again (its sections passed as they are:
        a dump would leave out PointPEFTConfig's preset)."""
        return type(self)(**{**dict(self), **changes})


def over_defaults(value: Any, handler: Callable[[Any], BaseModel], defaults: Mapping[str, Any]) -> BaseModel:
    """For a field validator (mode="wrap"): the section `value` over `defaults` (a preset's).
    Only the section's own fields count as set, so its dump (given_fields) says what the config
    said, and a changed preset brings its own defaults when it is read again (docs/guide.md,
    "The config")."""
    given = given_fields(value) if isinstance(value, BaseModel) else value
    if not isinstance(given, Mapping):
        return handler(value)
    section = handler({**defaults, **given})
    return type(section).model_construct(set(given), **dict(section))


def given_fields(section: BaseModel) -> dict[str, Any]:
    """The fields a section was given, not those its defaults or presets filled in."""
    return {name: getattr(section, name) for name in type(section).model_fields if name in section.model_fields_set}


def at(where: str, message: str) -> str:
    return f"{where}: {message}" if where else message


def read_yaml_mapping(path: str | Path) -> dict:
    """A YAML file whose top level is a mapping; errors name the file. An empty file is an
    error: it would otherwise start a run on every default, which nobody means."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}: {err.object[err.start:err.start + 1]!r}); "
                          "save it as UTF-8") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML ({err})") from None
    if raw is None:
        raise ConfigError(f"{path}: the file is empty; write the settings to change (see configs/ for examples), "
                          "or `{}` to run on every default")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, found {type(raw).__name__}")
    return raw


def parse_key_values(items: list[str], flag: str) -> dict[str, Any]:
    """`KEY=VALUE` command-line items as a mapping, each value read as a YAML scalar
    (200 -> int, 0.5 -> float, false -> bool, anything else a string); the configs
    that receive them validate the values."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} expects KEY=VALUE, got {item!r}")
        values[key] = yaml.safe_load(value) if value else value
    return values


def describe(err: ValidationError, root: type[BaseModel], path: str = "") -> str:
    """pydantic's errors as `place: field: problem`: the place is the chain of sections from
    `root` (after `path`, e.g. `multitask[2].optim`), the field what is left of the location
    (`env_vars.A`). Unknown keys of one place are listed together with the nearest valid names."""
    lines: list = []
    unknown: dict[str, list[str]] = {}
    for item in err.errors():
        place, section, rest = _place(root, tuple(item["loc"]), path)
        if item["type"] == "extra_forbidden" and len(rest) == 1:
            if place not in unknown:
                unknown[place] = []
                lines.append((place, section, unknown[place]))
            unknown[place].append(str(rest[0]))
            continue
        value = item.get("input")
        shown = "" if isinstance(value, (Mapping, BaseModel)) else f" (got {value!r})"
        problem = item["msg"].removeprefix("Value error, ") + shown
        lines.append(at(place, at(".".join(str(part) for part in rest), problem)))
    return "; ".join(line if isinstance(line, str) else at(line[0], _unknown_keys(line[2], line[1]))
                     for line in lines)


def _place(root: type[BaseModel], loc: tuple, path: str) -> tuple[str, type[BaseModel], tuple]:
    """(the sections `loc` passes through, as a path; the last one's class; the rest of `loc`)."""
    place, section, index = path, root, 0
    while index < len(loc):
        field = section.model_fields.get(str(loc[index]))
        inner, is_list = _section_class(field.annotation) if field else (None, False)
        if inner is None or (is_list and not (index + 1 < len(loc) and isinstance(loc[index + 1], int))):
            break
        name = f"{loc[index]}[{loc[index + 1]}]" if is_list else str(loc[index])
        place, section, index = f"{place}.{name}" if place else name, inner, index + (2 if is_list else 1)
    return place, section, loc[index:]


def _section_class(annotation: Any) -> tuple[Optional[type[BaseModel]], bool]:
    """(the config class a field holds, whether it holds a list of them)."""
    members = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) \
        else (annotation,)
    for member in members:
        is_list = typing.get_origin(member) is list
        inner = typing.get_args(member)[0] if is_list and typing.get_args(member) else member
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner, is_list
    return None, False


def _unknown_keys(keys: list[str], section: type[BaseModel]) -> str:
    valid = list(section.model_fields)
    parts = []
    for key in keys:
        near = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
        parts.append(f"{key!r}" + (f" (did you mean {', '.join(repr(n) for n in near)}?)" if near else ""))
    return f"unknown key(s) {', '.join(parts)}; valid keys: {', '.join(valid)}"
