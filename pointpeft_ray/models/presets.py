"""Named model sizes: the published one, and small ones for CPU demos and tests."""
from __future__ import annotations

from dataclasses import dataclass, field

from .backbone import BackboneConfig
from .peft.config import PointPEFTConfig


@dataclass(frozen=True)
class ModelPreset:
    backbone: BackboneConfig
    num_points: int
    # PEFT settings scaled with the backbone: published L = 6 of 12 blocks
    # (half the depth), adapter k = group_size / 2; the published bank encoder groups
    # as the backbone's pre-training does (Point-MAE: 64 patches).
    peft_overrides: dict = field(default_factory=dict)

    def peft_config(self, **changes) -> PointPEFTConfig:
        return PointPEFTConfig(**{**self.peft_overrides, **changes})


PRESETS: dict[str, ModelPreset] = {
    # Point-MAE on ScanObjectNN (docs/method.md, "Backbone"): 22.1M parameters.
    "point_mae": ModelPreset(BackboneConfig(), num_points=2048),
    # A CPU-sized backbone with the same structure.
    "small": ModelPreset(
        BackboneConfig(trans_dim=192, depth=6, num_heads=6, num_group=64, group_size=32, encoder_dims=192),
        num_points=1024, peft_overrides={"prompt_depth": 3},
    ),
    # Tests and smoke runs.
    "tiny": ModelPreset(
        BackboneConfig(trans_dim=64, depth=2, num_heads=4, num_group=16, group_size=8, encoder_dims=64),
        num_points=256, peft_overrides={"prompt_depth": 1, "neighbours": 4, "bank_num_group": 16},
    ),
}


def get_preset(name: str) -> ModelPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
