"""ShapeNet-55 pre-training clouds (Point-BERT/Point-MAE layout)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from ...progress import progress_bar

from ...errors import DataFormatError
from ..split import PointSplit
from ._checks import SPLITS, check_split, read_list_file, require_listed_files, require_path

LAYOUT = """<root>/ShapeNet-55/{train,test}.txt   one file name per line, '<synset id>-<model id>.npy'
<root>/shapenet_pc/<synset id>-<model id>.npy   (8192, 3) float32 each"""


def read_shapenet55(root: str | Path, split: str, progress: bool = True) -> PointSplit:
    """Points as stored (not re-normalised); label = rank of the synset among all listed synsets."""
    root = Path(root)
    list_path = require_path(root / "ShapeNet-55" / f"{check_split(split)}.txt", LAYOUT)
    cloud_dir = require_path(root / "shapenet_pc", LAYOUT, "directory")
    # Synsets from both lists, so train and test agree on labels even if one lacks a class.
    lists = {p: read_list_file(p) for p in (list_path.with_name(f"{s}.txt") for s in SPLITS) if p.is_file()}
    names = lists[list_path]
    synsets = sorted({synset_of(n, p) for p, listed in lists.items() for n in listed})
    files = [cloud_dir / name for name in names]
    require_listed_files(files, list_path, LAYOUT)
    rank = {synset: index for index, synset in enumerate(synsets)}
    labels = np.array([rank[synset_of(n, list_path)] for n in names], np.int64)
    return PointSplit(load_clouds(files, progress), labels, synsets,
                      name=f"shapenet55:{split}", source=str(list_path))


def synset_of(file_name: str, list_path: Path) -> str:
    synset, dash, _ = file_name.partition("-")
    if not dash or not synset:
        raise DataFormatError(f"{list_path}: {file_name!r} is not '<synset id>-<model id>.npy'")
    return synset


def load_clouds(files: list[Path], progress: bool) -> np.ndarray:
    """Stack (P, 3) .npy clouds into one preallocated (n, P, 3) array (the split is gigabytes)."""
    out = None
    for index, path in enumerate(progress_bar(files, progress, desc="ShapeNet-55", unit="shape")):
        cloud = load_npy(path)
        if out is None:
            out = np.empty((len(files), *cloud.shape), np.float32)
        if cloud.ndim != 2 or cloud.shape != out.shape[1:] or cloud.shape[1] != 3:
            raise DataFormatError(f"{path}: expected shape {out.shape[1:]} (points, 3), found {cloud.shape}")
        if not np.isfinite(cloud).all():
            raise DataFormatError(f"{path}: {int((~np.isfinite(cloud).all(1)).sum())} points hold NaN/inf")
        out[index] = cloud
    return out if out is not None else np.zeros((0, 0, 3), np.float32)


def load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)  # no pickled object arrays: they could run code
    except (ValueError, OSError, EOFError) as exc:
        raise DataFormatError(f"{path}: cannot read as a .npy array (truncated or corrupt?): {exc}") from exc
