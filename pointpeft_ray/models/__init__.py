"""Models: grouping ops, the Point-MAE backbone, heads, checkpoints, Point-PEFT."""
from ..errors import CheckpointError, ConfigError, MemoryBankError
from .backbone import BackboneConfig, FullFinetuneClassifier, PointMAEBackbone, build_cls_head
from .checkpoint import LoadReport, fingerprint_tensors, load_checkpoint
from .peft import (MemoryBank, PointPEFTConfig, PointPEFTModel, build_memory_bank, get_peft_model,
                   load_published_pointpeft)

__all__ = [
    "BackboneConfig", "PointMAEBackbone", "FullFinetuneClassifier", "build_cls_head",
    "load_checkpoint", "LoadReport", "fingerprint_tensors", "CheckpointError", "ConfigError",
    "MemoryBankError", "PointPEFTConfig", "PointPEFTModel", "get_peft_model", "MemoryBank",
    "build_memory_bank", "load_published_pointpeft",
]
