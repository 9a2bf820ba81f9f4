"""PointSplit: one split of a point-cloud classification dataset, in memory.

Every loader (public formats, the synthetic generator, the Arrow cache) returns
one of these, validated: fixed points per sample, finite values, labels in range.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import DataFormatError


@dataclass
class PointSplit:
    points: np.ndarray  # (n, P, 3) float32, xyz only
    labels: np.ndarray  # (n,) int64 in [0, len(class_names))
    class_names: list[str]
    name: str = ""  # e.g. "scanobjectnn/pb_t50_rs:train"
    source: str = ""  # where it came from: a path, or the generator and its settings
    extras: dict = field(default_factory=dict)  # optional per-sample arrays (e.g. "mask", "original_label")
    # Re-reading a cache that was validated when written skips the full scan.
    check: bool = field(default=True, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.points = np.ascontiguousarray(self.points, dtype=np.float32)
        self.labels = np.ascontiguousarray(self.labels, dtype=np.int64).reshape(-1)
        if self.check:
            self.validate()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def points_per_sample(self) -> int:
        return int(self.points.shape[1])

    def validate(self) -> None:
        where = self.source or self.name or "point split"
        if self.points.ndim != 3 or self.points.shape[-1] != 3:
            raise DataFormatError(f"{where}: points must be (samples, points, 3), found {self.points.shape}")
        if self.points.shape[0] != self.labels.shape[0]:
            raise DataFormatError(
                f"{where}: {self.points.shape[0]} point clouds but {self.labels.shape[0]} labels"
            )
        if len(self) == 0:
            raise DataFormatError(f"{where}: the split is empty")
        bad = ~np.isfinite(self.points).all(axis=(1, 2))
        if bad.any():
            raise DataFormatError(
                f"{where}: {int(bad.sum())} of {len(self)} samples hold NaN/inf points "
                f"(first: sample {int(np.flatnonzero(bad)[0])})"
            )
        if not self.class_names:
            raise DataFormatError(f"{where}: no class names")
        low, high = int(self.labels.min()), int(self.labels.max())
        if low < 0 or high >= self.num_classes:
            out = int(((self.labels < 0) | (self.labels >= self.num_classes)).sum())
            raise DataFormatError(
                f"{where}: {out} labels outside 0..{self.num_classes - 1} (found {low}..{high})"
            )

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=self.num_classes)
        return {name: int(c) for name, c in zip(self.class_names, counts)}
