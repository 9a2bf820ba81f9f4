"""Few-shot ModelNet40 episodes (Point-BERT's {way}way_{shot}shot/{fold}.pkl)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import DataFormatError
from ..split import PointSplit
from ._checks import check_split, normalize_to_unit_sphere, stack_scalar_labels, stack_xyz_clouds
from .class_names import MODELNET40_CLASSES
from .safe_pickle import load_pickle_opted_in

LAYOUT = """<root>/{way}way_{shot}shot/{fold}.pkl: a pickle of a dict with keys 'train' and 'test',
each a list of (points (8192, 6) float32, label in 0..way-1, original ModelNet40 label)"""


def read_fewshot(root: str | Path, way: int, shot: int, fold: int, split: str,
                 allow_pickle: bool = False) -> PointSplit:
    """One few-shot episode split; labels are the episode's 0..way-1, points centred in the unit sphere."""
    path = Path(root) / f"{way}way_{shot}shot" / f"{fold}.pkl"
    content = load_pickle_opted_in(path, allow_pickle, LAYOUT)
    if not isinstance(content, dict) or check_split(split) not in content:
        found = sorted(map(str, content)) if isinstance(content, dict) else type(content).__name__
        raise DataFormatError(f"{path}: expected a dict with key {split!r}, found {found}\n{LAYOUT}")
    samples = content[split]
    if not isinstance(samples, (list, tuple)):
        raise DataFormatError(f"{path}: {split!r} must be a list of samples, found {type(samples).__name__}")
    bad = next((i for i, s in enumerate(samples) if not isinstance(s, (tuple, list)) or len(s) != 3), None)
    if bad is not None:
        raise DataFormatError(f"{path}: {split} sample {bad} is not (points, label, original label)")
    points = stack_xyz_clouds([s[0] for s in samples], path, f"{split} points of sample")
    labels = stack_scalar_labels([s[1] for s in samples], path, f"{split} label of sample")
    originals = stack_scalar_labels([s[2] for s in samples], path, f"{split} original label of sample")
    return PointSplit(normalize_to_unit_sphere(points), labels, episode_class_names(labels, originals, way, path),
                      name=f"modelnet40_fewshot/{way}way_{shot}shot/{fold}:{split}", source=str(path),
                      extras={"original_label": originals})


def episode_class_names(labels: np.ndarray, originals: np.ndarray, way: int, path: Path) -> list[str]:
    """Name episode label k after the ModelNet40 class its samples come from."""
    names = [f"class_{k}" for k in range(way)]  # kept only for a label with no samples
    for k in range(way):
        found = np.unique(originals[labels == k])
        if len(found) > 1:
            raise DataFormatError(f"{path}: episode label {k} mixes original classes {found.tolist()}")
        if len(found) == 1:
            original = int(found[0])
            known = 0 <= original < len(MODELNET40_CLASSES)
            names[k] = MODELNET40_CLASSES[original] if known else f"class_{original}"
    return names
