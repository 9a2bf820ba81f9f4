"""Files shipped with the package: a small pre-trained backbone, so the quick start and
the CPU demos fine-tune from a good one without a 17-minute pre-training first.

`model.checkpoint: builtin:NAME` names one; each has a manifest (NAME.json) recording
the config and command that made it, its weights key and its checksum.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError

PREFIX = "builtin:"
FOLDER = Path(__file__).resolve().parent


def builtin_names() -> list[str]:
    return sorted(p.stem for p in FOLDER.glob("*.json"))


def manifest(name: str) -> dict:
    path = FOLDER / f"{name}.json"
    if not path.is_file():
        raise ConfigError(f"model.checkpoint: no built-in checkpoint {name!r}; shipped: {', '.join(builtin_names())}")
    return json.loads(path.read_text())


def resolve_checkpoint(value: str | None) -> str | None:
    """`builtin:NAME` -> the shipped file's path; any other value unchanged."""
    if not isinstance(value, str) or not value.startswith(PREFIX):
        return value
    name = value[len(PREFIX):]
    return str(FOLDER / manifest(name)["file"])
