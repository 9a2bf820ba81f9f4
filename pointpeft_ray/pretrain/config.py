"""PretrainConfig: one validated object for a Point-MAE pre-training run (YAML maps onto it 1:1).

Sections: `model` (backbone preset and overrides), `mae` (masking and decoder),
`data` (task, root, cache, augmentation), `optim` (the published pre-training
recipe as defaults), and run-level fields (seed, device, run_dir, output).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import Field, model_validator

from ..configuration import StrictConfig
from ..engine.config import BackboneChoice, ScheduleSection
from ..file_names import PRETRAINED_FILE

# The published pre-training runs the ScanObjectNN-sized transformer on 64
# patches of 32 points (1024-point ShapeNet clouds) instead of 128 patches.
PRESET_PRETRAIN_OVERRIDES = {"point_mae": {"num_group": 64}}


class PretrainModelSection(BackboneChoice):
    @classmethod
    def preset_backbone(cls, preset: Optional[str]) -> dict:
        return {**super().preset_backbone(preset), **PRESET_PRETRAIN_OVERRIDES.get(preset, {})}


class MaskSection(StrictConfig):
    """Masking and the decoder (published: 60% random masking, 4 blocks of 6 heads)."""

    mask_ratio: float = Field(0.6, gt=0.0, lt=1.0, description="share of patches hidden from the encoder")
    decoder_depth: int = Field(4, ge=1)
    decoder_num_heads: Optional[int] = Field(None, ge=1, description="None: the backbone's num_heads (published: 6)")
    decoder_drop_path_rate: float = Field(0.1, ge=0.0, lt=1.0, description="linear 0 -> this over the decoder")
    encode_masked_patches: bool = Field(
        True, description="run the patch encoder on every patch, then drop the masked ones (published); "
                          "False encodes only the visible ones: faster, BatchNorm statistics from visible patches")


class PretrainDataSection(StrictConfig):
    task: str = "synth/clean"
    root: Optional[str] = Field(None, description="folder of the downloaded dataset (real datasets)")
    cache_dir: Optional[str] = None
    allow_pickle: bool = False
    # The published pre-training augments with scale+translate whatever the
    # dataset (its ShapeNet recipe for classification says none).
    augment: str = Field("scale_translate", description="training augmentation (pretrain always augments explicitly)")
    options: dict = Field(default_factory=dict,
                          description="task options, e.g. samples_per_class / points / seed of a synthetic task")


class PretrainOptimSection(ScheduleSection):
    """The published pre-training recipe (docs/method.md, "Published recipe"); the schedule
    is the fine-tune one."""

    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(128, ge=1)
    grad_clip: Optional[float] = Field(None, gt=0, description="published pre-training does not clip")


class PretrainConfig(StrictConfig):
    model: PretrainModelSection = Field(default_factory=PretrainModelSection)
    mae: MaskSection = Field(default_factory=MaskSection)
    data: PretrainDataSection = Field(default_factory=PretrainDataSection)
    optim: PretrainOptimSection = Field(default_factory=PretrainOptimSection)
    seed: int = 0
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    bf16: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")
    run_dir: Optional[str] = Field(None, description="run state for resuming")
    output: Optional[str] = Field(None, description="where the Point-MAE checkpoint goes (default: run_dir/pretrain.pth)")

    @model_validator(mode="after")
    def _mask_leaves_both_sides(self):
        groups = self.model.backbone.num_group
        masked = masked_count(groups, self.mae.mask_ratio)
        if masked < 1 or masked >= groups:
            raise ValueError(
                f"mae.mask_ratio {self.mae.mask_ratio} masks {masked} of {groups} patches; "
                f"at least one patch must be masked and one visible"
            )
        heads, dim = self.mae.decoder_num_heads, self.model.backbone.trans_dim
        if heads is not None and dim % heads:
            raise ValueError(f"mae.decoder_num_heads ({heads}) must divide trans_dim ({dim})")
        return self

    def output_path(self) -> Path | None:
        if self.output:
            return Path(self.output)
        return Path(self.run_dir) / PRETRAINED_FILE if self.run_dir else None


def masked_count(num_group: int, mask_ratio: float) -> int:
    """Patches masked per sample: int(ratio * G), as published."""
    return int(mask_ratio * num_group)

