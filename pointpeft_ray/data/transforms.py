"""Batched point-cloud transforms on torch tensors (B, N, 3).

Whole batches at once, on any device, each draw from an explicit generator, so
augmentation never limits the loader and a seed reproduces an epoch.
Axis convention: y is up (as in the published ScanObjectNN / ModelNet loaders).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..models.ops import farthest_point_sample, gather_points

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _uniform(shape, low: float, high: float, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return (torch.rand(shape, generator=gen) * (high - low) + low).to(like.device, like.dtype)


@dataclass(frozen=True)
class ScaleTranslate:
    """Anisotropic scale U(low, high) per axis, then translation U(-shift, shift) (published recipe)."""

    scale_low: float = 2.0 / 3.0
    scale_high: float = 3.0 / 2.0
    shift: float = 0.2

    def __call__(self, points: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        batch = points.shape[0]
        scale = _uniform((batch, 1, 3), self.scale_low, self.scale_high, gen, points)
        shift = _uniform((batch, 1, 3), -self.shift, self.shift, gen, points)
        return points * scale + shift


@dataclass(frozen=True)
class RotateUp:
    """Random rotation about the up (y) axis, the ScanObjectNN "-aug" recipe."""

    max_angle: float = math.pi

    def __call__(self, points: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        angle = _uniform((points.shape[0],), -self.max_angle, self.max_angle, gen, points)
        cos, sin = angle.cos(), angle.sin()
        zero, one = torch.zeros_like(angle), torch.ones_like(angle)
        rot = torch.stack([cos, zero, sin, zero, one, zero, -sin, zero, cos], dim=-1).view(-1, 3, 3)
        return points @ rot.transpose(1, 2)


@dataclass(frozen=True)
class Jitter:
    sigma: float = 0.01
    clip: float = 0.05

    def __call__(self, points: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        noise = torch.randn(points.shape, generator=gen).to(points.device, points.dtype) * self.sigma
        return points + noise.clamp_(-self.clip, self.clip)


@dataclass(frozen=True)
class Subsample:
    """Keep `num_points` per cloud: a random subset, farthest point sampling, or the
    first points (for clouds stored in FPS order, the first n are the FPS of n)."""

    num_points: int
    method: str = "random"

    def __post_init__(self):
        if self.method not in ("random", "fps", "first"):
            raise ValueError(f"Subsample.method must be 'random', 'fps' or 'first', got {self.method!r}")

    def __call__(self, points: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        batch, count, _ = points.shape
        if self.num_points > count:
            raise ValueError(f"Subsample: clouds have {count} points, asked for {self.num_points}")
        if self.num_points == count and self.method != "fps":
            return points
        if self.method == "first":
            return points[:, : self.num_points]
        if self.method == "fps":
            return gather_points(points, farthest_point_sample(points, self.num_points))
        # One random subset for the whole batch, as the published recipe draws
        # it (and far cheaper than a subset per cloud).
        index = torch.randperm(count, generator=gen)[: self.num_points].to(points.device)
        return points.index_select(1, index)


@dataclass(frozen=True)
class NormalizeUnitSphere:
    """Centre each cloud and scale it into the unit sphere."""

    def __call__(self, points: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        centred = points - points.mean(dim=1, keepdim=True)
        radius = centred.norm(dim=-1).amax(dim=1).clamp_min(1e-12)
        return centred / radius.view(-1, 1, 1)


@dataclass(frozen=True)
class Compose:
    steps: tuple = ()

    def __call__(self, points: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        for step in self.steps:
            points = step(points, gen)
        return points


AUGMENTATIONS: dict[str, Callable[[], Transform]] = {
    "none": lambda: Compose(()),
    "scale_translate": ScaleTranslate,
    "rotate": RotateUp,
    "rotate_scale_translate": lambda: Compose((RotateUp(), ScaleTranslate())),
    "jitter": Jitter,
}


def build_augmentation(name: str) -> Transform:
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; choose one of {', '.join(AUGMENTATIONS)}")
    return AUGMENTATIONS[name]()


def voting_views(points: torch.Tensor, views: int, transform: Transform, gen: torch.Generator) -> list[torch.Tensor]:
    """Test-time voting: `views` augmented copies of the batch (the first unchanged);
    the caller averages the predictions over them."""
    if views < 1:
        raise ValueError(f"voting needs at least one view, got {views}")
    return [points] + [transform(points, gen) for _ in range(views - 1)]


def compose(steps: Sequence[Transform]) -> Transform:
    return Compose(tuple(steps))
