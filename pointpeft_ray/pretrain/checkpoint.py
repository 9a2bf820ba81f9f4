"""Writing the pre-trained weights in the published Point-MAE `pretrain.pth` layout.

`{"base_model": state, "epoch": n}`: encoder keys under `MAE_encoder.`, decoder
keys (`mask_token`, `decoder_pos_embed.*`, `MAE_decoder.*`, `increase_dim.*`)
unprefixed. `PointMAEPretrainModel.state_dict()` already has these names.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from ..atomic import atomic_file
from ..errors import CheckpointError
from ..models.checkpoint import WRAPPER_PREFIX

ENCODER_PREFIX = "MAE_encoder."


def write_pretrain_checkpoint(state: Mapping[str, torch.Tensor], path: str | Path, epoch: int) -> Path:
    """Save atomically: a reader (or a crash) never sees a half-written file."""
    if not any(key.startswith(ENCODER_PREFIX) for key in state):
        raise CheckpointError(f"{path}: refusing to write a pre-train checkpoint without {ENCODER_PREFIX}* keys")
    # DDP's `module.` is stripped so the file looks like a single-process save.
    weights = {key.removeprefix(WRAPPER_PREFIX): value.detach().to("cpu").clone() for key, value in state.items()}
    path = Path(path)
    with atomic_file(path) as tmp:
        torch.save({"base_model": weights, "epoch": int(epoch)}, tmp)
    return path
