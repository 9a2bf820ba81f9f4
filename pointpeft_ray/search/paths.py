"""Dotted TrainConfig paths (`peft.prompt_length`, `optim.lr`, `model.backbone.drop_path_rate`):
resolving them to the config field they name, checking values against that field, and
writing them into a nested override mapping.

A search space names its parameters this way, so a typo is caught when the space is
loaded, with the nearest valid names, instead of when the hundredth trial starts.
"""
from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Optional

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from ..engine.config import TrainConfig

# Free-form dicts: any key is accepted (task options differ per task).
FREE_SECTIONS = frozenset({"data.options"})

FieldKind = Literal["int", "float", "bool", "str", "choice", "other", "any"]
_SCALAR_KINDS: dict[type, FieldKind] = {bool: "bool", int: "int", float: "float", str: "str"}


@dataclass(frozen=True)
class ConfigField:
    """The config field a dotted path names (`info` is None under a free-form dict)."""

    path: str
    info: Optional[FieldInfo]

    @property
    def nullable(self) -> bool:
        return self.info is None or type(None) in typing.get_args(self.info.annotation)

    @property
    def kind(self) -> FieldKind:
        if self.info is None:
            return "any"
        inner = [a for a in _union_members(self.info.annotation) if a is not type(None)]
        if len(inner) != 1:
            return "other"
        if typing.get_origin(inner[0]) is Literal:
            return "choice"
        return _SCALAR_KINDS.get(inner[0], "other")

    def coerce(self, value: Any) -> Any:
        """`value` as the field stores it (e.g. the YAML string "1e-4" -> 0.0001), checked
        against the field's own constraints (ge, lt, Literal choices)."""
        if self.info is None:
            return value
        try:
            return TypeAdapter(self.info.rebuild_annotation()).validate_python(value)
        except ValidationError as err:
            raise ValueError(f"{value!r} is not valid for {self.path}: {err.errors()[0]['msg']}") from None


def _union_members(annotation: Any) -> tuple:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def resolve_field(path: str) -> ConfigField:
    """The field `path` names; ValueError with the nearest valid names otherwise."""
    parts = path.split(".")
    model: type[BaseModel] = TrainConfig
    prefix = ""
    for index, part in enumerate(parts):
        here = f"{prefix}{part}"
        last = index == len(parts) - 1
        if here in FREE_SECTIONS:
            if len(parts) - index != 2:
                raise ValueError(f"name one key under {here} (e.g. {here}.points)")
            return ConfigField(path, None)
        section = _section_model(model, part)
        if section is not None:
            if last:
                raise ValueError(f"{path!r} is a section; name one of its fields: {', '.join(section.model_fields)}")
            model, prefix = section, here + "."
            continue
        if part not in model.model_fields:
            raise ValueError(f"unknown field {part!r} in {prefix.rstrip('.') or 'TrainConfig'}"
                             f"{_nearest(part, model, prefix)}")
        if not last:
            raise ValueError(f"{here} is a value, not a section")
        return ConfigField(path, model.model_fields[part])


def _section_model(model: type[BaseModel], part: str) -> Optional[type[BaseModel]]:
    field = model.model_fields.get(part)
    annotation = field.annotation if field else None
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _nearest(name: str, model: type[BaseModel], prefix: str) -> str:
    near = difflib.get_close_matches(name, list(model.model_fields), n=3, cutoff=0.5)
    valid = ", ".join(prefix + f for f in model.model_fields)
    hint = f" (did you mean {', '.join(repr(prefix + n) for n in near)}?)" if near else ""
    return f"{hint}; valid: {valid}"


def effective_value(config: TrainConfig, path: str) -> Any:
    """The value a run with `config` uses for `path` (PEFT and backbone fields: the presets'
    values where the config sets none)."""
    section, _, name = path.rpartition(".")
    if section in FREE_SECTIONS:
        options = config.data.options
        if name not in options:
            raise ValueError(f"{path} has no value in the base config")
        return options[name]
    value: Any = config
    for part in path.split("."):
        value = getattr(value, part)
    return value


def set_path(target: dict, path: str, value: Any) -> None:
    """Write `value` at a dotted path of a nested mapping, creating sections on the way."""
    *sections, name = path.split(".")
    for part in sections:
        target = target.setdefault(part, {})
    target[name] = value


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict:
    """`overrides` over `base`, merged key by key in nested mappings (so a space's
    `base: {peft: {top_k: 4}}` keeps the run config's other PEFT settings)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
