"""Hyper-parameter search spaces: a declarative YAML format over TrainConfig fields,
sampled with Optuna define-by-run (see space.py for the format)."""
from importlib import import_module

__all__ = ["SearchSpace"]


def __getattr__(name: str):
    # The space loads torch (through TrainConfig); `pointpeft-ray report` needs search.expressions alone.
    if name in __all__:
        return getattr(import_module(".space", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
