"""Saving and loading a PointPEFTModel's PEFT weights alone, with their config beside them.

Layout of an adapter directory:
  adapter_config.json    PEFT config, backbone config, classes, backbone fingerprint
  adapter_weights.pt     the adapter state dict (tensors only: loads with weights_only)
  memory_bank.arrow      optional: the bank the prompts were trained with
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ...atomic import atomic_directory
from ...errors import CheckpointError
from ...file_names import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, MEMORY_BANK_FILE
from .memory_bank import read_bank_file, write_bank_file

ADAPTER_FORMAT_VERSION = 1


def save_adapter(model: torch.nn.Module, directory: str | Path, include_memory_bank: bool = True) -> Path:
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    trainable, total = model.get_nb_trainable_parameters()
    meta = {
        "format_version": ADAPTER_FORMAT_VERSION,
        "peft_config": model.peft_config.model_dump(),
        "backbone_config": model.backbone.config.model_dump(),
        "num_classes": model.num_classes,
        "backbone_fingerprint": model.backbone_fingerprint,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    # Build the whole directory under a temporary name, then swap it in, so a
    # reader never finds half an adapter.
    with atomic_directory(directory) as staging:
        state = {k: v.detach().cpu().contiguous() for k, v in model.adapter_state_dict().items()}
        torch.save(state, staging / ADAPTER_WEIGHTS_FILE)
        if include_memory_bank and model.memory_bank is not None:
            write_bank_file(model.memory_bank, staging / MEMORY_BANK_FILE)
        (staging / ADAPTER_CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return directory


def read_adapter_config(directory: str | Path) -> dict:
    path = Path(directory) / ADAPTER_CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: not an adapter directory (no {ADAPTER_CONFIG_FILE})")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: invalid JSON ({err})") from None
    if meta.get("format_version") != ADAPTER_FORMAT_VERSION:
        raise CheckpointError(f"{path}: adapter format {meta.get('format_version')!r}, expected {ADAPTER_FORMAT_VERSION}")
    return meta


def load_adapter(model: torch.nn.Module, directory: str | Path) -> None:
    directory = Path(directory)
    meta = read_adapter_config(directory)
    if meta["backbone_fingerprint"] != model.backbone_fingerprint:
        raise CheckpointError(
            f"{directory}: adapter was trained on a different backbone (fingerprint "
            f"{meta['backbone_fingerprint'][:12]}..., this model's backbone {model.backbone_fingerprint[:12]}...); "
            "load the same pre-trained weights before get_peft_model"
        )
    if meta["peft_config"] != model.peft_config.model_dump() or meta["num_classes"] != model.num_classes:
        raise CheckpointError(
            f"{directory}: adapter config or class count differs from this model's; "
            "build the model with PointPEFTModel.from_adapter(backbone, directory)"
        )
    try:
        state = torch.load(directory / ADAPTER_WEIGHTS_FILE, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{directory}: missing {ADAPTER_WEIGHTS_FILE}") from None
    expected = set(model.adapter_state_dict())
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise CheckpointError(f"{directory}: adapter weights do not fit: missing {missing[:6]}, unexpected {extra[:6]}")
    model.load_state_dict(state, strict=False)
    bank_path = directory / MEMORY_BANK_FILE
    if bank_path.is_file():
        model.attach_memory_bank(read_bank_file(bank_path))
