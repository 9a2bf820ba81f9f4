"""Hyper-parameter search spaces: a declarative YAML format over TrainConfig fields,
sampled with Optuna define-by-run (see space.py for the format)."""
from .space import SearchSpace

__all__ = ["SearchSpace"]
