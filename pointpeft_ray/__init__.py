"""pointpeft-ray: Point-PEFT fine-tuning of 3D point-cloud transformers on Ray."""
from .errors import CheckpointError, ConfigError, MemoryBankError, PointPEFTError
from .models import BackboneConfig, FullFinetuneClassifier, PointMAEBackbone, load_checkpoint
from .models.peft import MemoryBank, PointPEFTConfig, PointPEFTModel, get_peft_model

__version__ = "0.1.0"

__all__ = [
    "BackboneConfig", "PointMAEBackbone", "FullFinetuneClassifier", "load_checkpoint",
    "PointPEFTConfig", "PointPEFTModel", "get_peft_model", "MemoryBank",
    "PointPEFTError", "ConfigError", "CheckpointError", "MemoryBankError", "__version__",
]
