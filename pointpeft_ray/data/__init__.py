"""Data: synthetic benchmark suite, public-format loaders, Arrow cache, tasks, transforms."""
from .split import PointSplit

__all__ = ["PointSplit"]
