"""Checks shared by the format readers: every failure becomes a DataFormatError
that names the file and says what was expected, never a bare KeyError/OSError."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from ...errors import ConfigError, DataFormatError

SPLITS = ("train", "test")


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def require_path(path: Path, layout: str, kind: str = "file") -> Path:
    """Return path if it exists; otherwise say what was expected where."""
    exists = path.is_dir() if kind == "directory" else path.is_file()
    if not exists:
        raise DataFormatError(f"{kind} not found: {path}\nexpected layout:\n{layout}")
    return path


@contextmanager
def open_hdf5(path: Path) -> Iterator:
    import h5py  # only the HDF5 readers pay for importing it

    try:
        with h5py.File(path, "r") as handle:
            yield handle
    except OSError as exc:
        # h5py reports truncated or non-HDF5 files (and failed reads) as OSError.
        raise DataFormatError(f"{path}: cannot read as HDF5 (truncated or corrupt?): {exc}") from exc


def read_hdf5_key(handle, path: Path, key: str, required: bool = True) -> np.ndarray | None:
    if key not in handle:
        if not required:
            return None
        raise DataFormatError(
            f"{path}: missing key {key!r} (keys found: {sorted(handle.keys())})"
        )
    if not hasattr(handle[key], "shape"):  # a group, not a dataset
        raise DataFormatError(f"{path}: {key!r} is an HDF5 group, expected an array")
    return np.asarray(handle[key][()])


def read_hdf5_clouds(handle, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """'data' as (samples, points, 3) and 'label' as int64 (samples,), stored (samples,) or (samples, 1)."""
    points = read_hdf5_key(handle, path, "data")
    if points.ndim != 3 or points.shape[-1] != 3 or (points.shape[0] and not points.shape[1]):
        raise DataFormatError(
            f"{path}: key 'data' must have shape (samples, points >= 1, 3), found {points.shape}"
        )
    count, labels = len(points), read_hdf5_key(handle, path, "label")
    if labels.shape not in ((count,), (count, 1)):
        raise DataFormatError(
            f"{path}: key 'label' must have shape ({count},) or ({count}, 1) "
            f"to match {count} point clouds, found {labels.shape}"
        )
    labels = labels.reshape(-1)
    if not np.issubdtype(labels.dtype, np.integer):
        # Float labels are tolerated only when they hold whole numbers.
        if not np.issubdtype(labels.dtype, np.number) or not np.all(np.mod(labels, 1) == 0):
            raise DataFormatError(f"{path}: key 'label' must hold integer labels, found {labels.dtype}")
    return points, labels.astype(np.int64)


def normalize_to_unit_sphere(points: np.ndarray) -> np.ndarray:
    """Centre each cloud (n, P, 3) at its mean and scale its farthest point to radius 1."""
    if points.size == 0:  # an empty split: PointSplit reports it
        return points.astype(np.float32)
    # NaN/inf clouds pass through unchanged in kind; PointSplit rejects them with counts.
    with np.errstate(invalid="ignore", over="ignore"):
        centred = points - points.mean(axis=1, keepdims=True)
        radius = np.sqrt((centred**2).sum(-1)).max(axis=1)
    # A cloud collapsed onto one point has radius 0: leave it centred rather than divide by 0.
    radius = np.where(radius > 0, radius, 1.0)
    return (centred / radius[:, None, None]).astype(np.float32)


def read_list_file(path: Path) -> list[str]:
    """Non-blank, stripped lines of a text list (class names, shape ids, file names)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path}: cannot read as a UTF-8 text list: {exc}") from exc
    return [line.strip() for line in text.splitlines() if line.strip()]


def require_listed_files(paths: list[Path], list_path: Path, layout: str) -> None:
    """Check every listed file up front, so a gap fails in seconds, not after minutes of reading."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataFormatError(
            f"{list_path}: {len(missing)} of {len(paths)} listed files not found "
            f"(first: {missing[0]})\nexpected layout:\n{layout}"
        )


def stack_xyz_clouds(clouds, path: Path, what: str) -> np.ndarray:
    """(n, P, 3) float32 from a sequence of (P, C>=3) arrays; columns past xyz (normals) dropped."""
    if len(clouds) == 0:
        return np.zeros((0, 0, 3), np.float32)
    first = np.asarray(clouds[0])
    if first.ndim != 2 or first.shape[1] < 3 or first.shape[0] == 0:
        raise DataFormatError(f"{path}: {what} 0 must have shape (points, 3 or 6), found {first.shape}")
    out = np.empty((len(clouds), first.shape[0], 3), np.float32)
    for index, cloud in enumerate(clouds):
        cloud = np.asarray(cloud)
        if cloud.ndim != 2 or cloud.shape[0] != first.shape[0] or cloud.shape[1] < 3:
            raise DataFormatError(
                f"{path}: {what} {index} must have shape ({first.shape[0]}, 3 or 6) "
                f"like {what} 0, found {cloud.shape}"
            )
        out[index] = cloud[:, :3]
    return out


def stack_scalar_labels(values, path: Path, what: str) -> np.ndarray:
    """int64 (n,) from a sequence of ints, numpy scalars or one-element arrays."""
    labels = np.empty(len(values), np.int64)
    for index, value in enumerate(values):
        flat = np.asarray(value).reshape(-1)
        if flat.size != 1 or not np.issubdtype(flat.dtype, np.integer):
            raise DataFormatError(
                f"{path}: {what} {index} must be one integer, found {flat.dtype} of shape {np.shape(value)}"
            )
        labels[index] = flat[0]
    return labels
