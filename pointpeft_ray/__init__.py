"""pointpeft-ray: Point-PEFT fine-tuning of 3D point-cloud transformers on Ray."""
from importlib import import_module

from .errors import CheckpointError, ConfigError, MemoryBankError, PointPEFTError

__version__ = "0.1.0"

# The model API loads torch (seconds); it is imported on first use, so commands that
# need no model (`pointpeft-ray status`, `logs`, `--help`) start at once.
_LAZY = {
    "BackboneConfig": ".models", "PointMAEBackbone": ".models", "FullFinetuneClassifier": ".models",
    "load_checkpoint": ".models", "PointPEFTConfig": ".models.peft", "PointPEFTModel": ".models.peft",
    "get_peft_model": ".models.peft", "MemoryBank": ".models.peft", "load_published_pointpeft": ".models.peft",
}

__all__ = [*_LAZY, "PointPEFTError", "ConfigError", "CheckpointError", "MemoryBankError", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
