"""TrainConfig: one validated object for a fine-tuning run (YAML maps onto it 1:1).

Sections: `model` (backbone size / preset and pre-trained checkpoint), `peft`
(PointPEFTConfig), `data` (task, root, cache), `optim` (the published recipe as
defaults), and run-level fields (mode, seed, device, evaluation).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import (Field, ValidationInfo, ValidatorFunctionWrapHandler, field_serializer, field_validator,
                      model_validator)

from ..assets import resolve_checkpoint
from ..configuration import StrictConfig, given_fields, over_defaults
from ..errors import ConfigError
from ..file_names import TENSORBOARD_DIR
from ..models.backbone import BackboneConfig
from ..models.peft.config import PointPEFTConfig
from ..models.presets import PRESETS


class BackboneChoice(StrictConfig):
    """A backbone size: a named preset, with BackboneConfig fields overriding it."""

    preset: Optional[str] = Field("point_mae", description="named size (point_mae, small, tiny); fields below override it")
    backbone: BackboneConfig = Field(default_factory=BackboneConfig,
                                     description="BackboneConfig fields overriding the preset's")

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, preset: Optional[str]) -> Optional[str]:
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"unknown preset; choose one of {', '.join(PRESETS)}")
        return preset

    @field_validator("backbone", mode="wrap")
    @classmethod
    def _over_preset(cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> BackboneConfig:
        return over_defaults(value, handler, cls.preset_backbone(info.data.get("preset")))

    @field_serializer("backbone")
    def _as_given(self, backbone: BackboneConfig) -> dict:
        return given_fields(backbone)

    @classmethod
    def preset_backbone(cls, preset: Optional[str]) -> dict:
        return PRESETS[preset].backbone.model_dump() if preset else {}


class ModelSection(BackboneChoice):
    checkpoint: Optional[str] = Field(None, description="pre-trained weights (Point-MAE / Point-BERT layout), or "
                                      "builtin:NAME for one shipped with the package (e.g. builtin:tiny-synth-clean)")

    @field_validator("checkpoint")
    @classmethod
    def _builtin(cls, value: Optional[str]) -> Optional[str]:
        return resolve_checkpoint(value)


class DataSection(StrictConfig):
    task: str = "synth/hardest"
    root: Optional[str] = Field(None, description="folder of the downloaded dataset (real datasets)")
    cache_dir: Optional[str] = None
    allow_pickle: bool = False
    augment: Optional[str] = Field(None, description="training augmentation as named; None = the task's, as the "
                                   "recipe does it (published: ScanObjectNN's rotate is published_scanobjectnn)")
    voting_views: Optional[int] = Field(None, ge=1, description="test-time views; None = the task's recipe")
    options: dict = Field(default_factory=dict,
                          description="task options, e.g. samples_per_class / points / seed of a synthetic task")


class ScheduleSection(StrictConfig):
    """AdamW with a warm-up then cosine schedule (build.lr_at follows it)."""

    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    epochs: int = Field(300, ge=1)
    warmup_epochs: int = Field(10, ge=0)
    warmup_start_lr: float = Field(1e-6, ge=0)
    min_lr: float = Field(1e-6, ge=0)
    batch_size: int = Field(32, ge=1)
    grad_clip: Optional[float] = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _warmup_fits(self):
        if self.warmup_epochs >= self.epochs and self.epochs > 1:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be < epochs ({self.epochs})")
        return self


class OptimSection(ScheduleSection):
    """The published fine-tune recipe (docs/method.md, "Published recipe")."""

    label_smoothing: float = Field(0.0, ge=0, lt=1)


class TrainConfig(StrictConfig):
    mode: Literal["peft", "full", "linear"] = "peft"
    recipe: Literal["ours", "published"] = Field(
        "ours", description="published: the published code's training recipe (augmentation, point order, "
        "voting, weight-decay rule, schedule) and PEFT behaviour (peft preset 'published' unless peft.preset "
        "says otherwise); see docs/method.md, \"Differences from the published code\"")
    model: ModelSection = Field(default_factory=ModelSection)
    peft: PointPEFTConfig = Field(default_factory=PointPEFTConfig, description="PointPEFTConfig fields over the "
                                  "model preset's, and optionally preset: ours | published (default: the recipe's)")
    data: DataSection = Field(default_factory=DataSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    seed: int = 0
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    bf16: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")
    compile: bool = Field(False, description="torch.compile the model's forward (same results; falls back to "
                          "eager where compilation is unavailable); pays off on GPUs")
    eval_every: int = Field(1, ge=1)
    run_dir: Optional[str] = Field(None, description="in-process runs: checkpoints (last/, best/) and TensorBoard logs")
    log_dir: Optional[str] = Field(None, description="TensorBoard event files; default run_dir/tensorboard")

    @field_validator("peft", mode="wrap")
    @classmethod
    def _peft_over_presets(cls, value: Any, handler: ValidatorFunctionWrapHandler,
                           info: ValidationInfo) -> PointPEFTConfig:
        # The preset's behaviour switches, then the model preset's sizes, then what the config says.
        model = info.data.get("model")
        sizes = PRESETS[model.preset].peft_overrides if model is not None and model.preset else {}
        return over_defaults(value, handler, {"preset": info.data.get("recipe", "ours"), **sizes})

    @field_serializer("peft")
    def _peft_as_given(self, peft: PointPEFTConfig) -> dict:
        return given_fields(peft)

    def check_paths(self) -> "TrainConfig":
        """Fail before any work starts (and before Ray workers are launched) when a
        file the run needs is missing."""
        checkpoint = self.model.checkpoint
        if checkpoint and not Path(checkpoint).is_file():
            raise ConfigError(f"model.checkpoint: file not found: {checkpoint}")
        root = self.data.root
        if root and not Path(root).is_dir():
            raise ConfigError(f"data.root: folder not found: {root} (task {self.data.task})")
        return self

    def uses_memory_bank(self) -> bool:
        return self.mode == "peft" and self.peft.uses_bank

    def tensorboard_dir(self) -> Optional[Path]:
        if self.log_dir:
            return Path(self.log_dir)
        return Path(self.run_dir) / TENSORBOARD_DIR if self.run_dir else None
