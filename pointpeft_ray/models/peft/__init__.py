"""Point-PEFT modules: config, Point-prior Prompt, memory bank, Geometry-aware Adapter."""
from .config import PointPEFTConfig
from .memory_bank import MemoryBank, build_memory_bank, dataset_fingerprint
from .model import PointPEFTModel, get_peft_model
from .published import load_published_pointpeft

__all__ = ["PointPEFTConfig", "PointPEFTModel", "get_peft_model", "MemoryBank", "build_memory_bank",
           "dataset_fingerprint", "load_published_pointpeft"]
