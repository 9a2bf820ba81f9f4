"""Validated config objects with errors that name the field and the fix.

Every config in the package derives from :class:`StrictConfig`: unknown keys
are rejected with the nearest valid names, and pydantic's errors are turned
into one readable :class:`ConfigError`.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Mapping

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
        _reject_unknown_keys(type(self), data, where=type(self).__name__)
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise ConfigError(format_validation_error(type(self).__name__, err, type(self))) from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str | None = None):
        """Build from a plain mapping (e.g. a YAML section); `where` names the source."""
        data = dict(data or {})
        try:
            return cls(**data)
        except ConfigError as err:
            if where:
                raise ConfigError(f"{where}: {err}") from None
            raise

    @classmethod
    def from_yaml(cls, path: str | Path):
        """Build from a YAML file; errors name the file."""
        return cls.from_dict(read_yaml_mapping(path), where=str(path))

    def replace(self, **changes: Any):
        """A copy with some fields changed, validated again."""
        return type(self)(**{**self.model_dump(), **changes})


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


def _reject_unknown_keys(cls: type[BaseModel], data: Mapping[str, Any], where: str) -> None:
    valid = list(cls.model_fields)
    unknown = [k for k in data if k not in valid]
    if not unknown:
        return
    parts = []
    for key in unknown:
        near = difflib.get_close_matches(str(key), valid, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(repr(n) for n in near)}?)" if near else ""
        parts.append(f"{key!r}{hint}")
    raise ConfigError(
        f"{where}: unknown key(s) {', '.join(parts)}; valid keys: {', '.join(valid)}"
    )


def format_validation_error(where: str, err: ValidationError, root: type[BaseModel] | None = None) -> str:
    lines = []
    for item in err.errors():
        loc = tuple(item.get("loc", ()))
        field = ".".join(str(p) for p in loc)
        value = item.get("input")
        msg = item.get("msg", "invalid")
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if item.get("type") == "extra_forbidden" and root is not None:
            msg = "unknown key" + _suggestion(root, loc)
        shown = "" if isinstance(value, Mapping) else f" (got {value!r})"
        lines.append(f"{field}: {msg}{shown}" if field else msg)
    return f"{where}: " + "; ".join(lines)


def _suggestion(root: type[BaseModel], loc: tuple) -> str:
    """Nearest valid names for an unknown nested key, found by walking the field types."""
    cls = root
    for part in loc[:-1]:
        field = cls.model_fields.get(str(part)) if isinstance(cls, type) and issubclass(cls, BaseModel) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return ""
        cls = field.annotation
    valid = list(cls.model_fields)
    near = difflib.get_close_matches(str(loc[-1]), valid, n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(repr(n) for n in near)}?)" if near else ""
    return f"{hint}; valid keys: {', '.join(valid)}"
