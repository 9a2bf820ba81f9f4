"""Building config objects from parts of a job file, with errors that say where.

A job file nests whole configs (a TrainConfig under `base:`, one per multi-task entry,
a PretrainConfig under `pretrain:`). The config classes name a bad field relative to
themselves (`OptimSection: lr: ...`); here each nested section is built on its own
first, so the error carries its place in the job file instead
(`multitask[2].optim: lr: ...`).
"""
from __future__ import annotations

import types
import typing
from typing import Any, Mapping, Optional

from ..configuration import StrictConfig
from ..data.tasks import get_task
from ..errors import ConfigError, PointPEFTError


def build_section(cls: type[StrictConfig], data: Any, path: str):
    """`cls` built from `data`; a ConfigError names `path` (e.g. `multitask[2]`) and the
    field inside it. An empty `path` is the top of the file."""
    if not isinstance(data, Mapping):
        raise ConfigError(at(path, f"expected a mapping, found {type(data).__name__}"))
    _build_subsections(cls, data, path)
    try:
        return cls(**data)
    except ConfigError as err:
        raise ConfigError(at(path, _without_class_name(str(err), cls))) from None


def _build_subsections(cls: type[StrictConfig], data: Mapping, path: str) -> None:
    """Nested sections first, so their errors carry the nested path."""
    for name, value in data.items():
        field = cls.model_fields.get(str(name))
        section, is_list = _section_class(field.annotation) if field else (None, False)
        if section is None:
            continue
        # Other shapes (a shorthand, a wrong type) are the class's own business.
        if is_list and isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, Mapping):
                    build_section(section, item, f"{join(path, name)}[{index}]")
        elif not is_list and isinstance(value, Mapping):
            build_section(section, value, join(path, name))


def _section_class(annotation: Any) -> tuple[Optional[type[StrictConfig]], bool]:
    """(the StrictConfig class a field holds, whether it holds a list of them)."""
    members = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) \
        else (annotation,)
    for member in members:
        is_list = typing.get_origin(member) is list
        inner = typing.get_args(member)[0] if is_list and typing.get_args(member) else member
        if isinstance(inner, type) and issubclass(inner, StrictConfig):
            return inner, is_list
    return None, False


def _without_class_name(message: str, cls: type) -> str:
    # StrictConfig starts every message with the class name; the path replaces it.
    prefix = f"{cls.__name__}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def join(path: str, name: Any) -> str:
    return f"{path}.{name}" if path else str(name)


def at(path: str, message: str) -> str:
    return f"{path}: {message}" if path else message


def check_task(name: str, options: Optional[Mapping], task_path: str, options_path: str) -> None:
    """The task is in the registry (else the nearest names) and takes these options."""
    try:
        spec = get_task(name)
    except PointPEFTError as err:  # DataFormatError from the registry
        raise ConfigError(at(task_path, str(err))) from None
    try:
        spec.with_options(**dict(options or {}))
    except PointPEFTError as err:
        raise ConfigError(at(options_path, str(err))) from None
