"""ModelNet40: the Point-BERT text tree, its pickled FPS cache, and the PointNet HDF5 release."""
from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from ...progress import progress_bar

from ...errors import DataFormatError
from ...models.ops import farthest_point_sample, gather_points
from ..split import PointSplit
from ._checks import (check_split, normalize_to_unit_sphere, open_hdf5, read_hdf5_clouds, read_list_file,
                      require_listed_files, require_path, stack_scalar_labels, stack_xyz_clouds)
from .class_names import MODELNET40_CLASSES
from .safe_pickle import load_pickle_opted_in

TEXT_LAYOUT = """<root>/modelnet40_normal_resampled/
    modelnet40_shape_names.txt     one class name per line
    modelnet40_{train,test}.txt    one shape id per line, e.g. airplane_0001, flower_pot_0001
    <class>/<shape id>.txt         one point per line: x,y,z,nx,ny,nz"""

DAT_LAYOUT = """modelnet40_{train,test}_8192pts_fps.dat: a pickle of
[list of (8192, 6) float32 arrays, list of (1,) int32 labels]"""

HDF5_LAYOUT = """<root>/modelnet40_ply_hdf5_2048/ply_data_{train,test}<k>.h5 (k = 0, 1, ...)
each with keys 'data' (n x 2048 x 3 float) and 'label' (n x 1 int)"""


# --- text tree ---------------------------------------------------------------

def read_modelnet40_text(root: str | Path, split: str, num_points: int = 8192, progress: bool = True,
                         *, device: str | torch.device = "cpu", batch_size: int = 64) -> PointSplit:
    """Read the text tree, reduce each shape to num_points by FPS, centre and scale to the unit sphere.

    FPS runs on `device`, batch_size shapes at a time; it dominates the cost on CPU.
    """
    base = require_path(Path(root) / "modelnet40_normal_resampled", TEXT_LAYOUT, "directory")
    class_names = read_list_file(require_path(base / "modelnet40_shape_names.txt", TEXT_LAYOUT))
    list_path = require_path(base / f"modelnet40_{check_split(split)}.txt", TEXT_LAYOUT)
    shape_ids = read_list_file(list_path)
    classes = [shape_class(shape_id, class_names, list_path) for shape_id in shape_ids]
    files = [base / cls / f"{shape_id}.txt" for cls, shape_id in zip(classes, shape_ids)]
    require_listed_files(files, list_path, TEXT_LAYOUT)
    points = sample_text_clouds(files, num_points, progress, torch.device(device), batch_size)
    labels = np.array([class_names.index(cls) for cls in classes], np.int64)
    return PointSplit(normalize_to_unit_sphere(points), labels, class_names,
                      name=f"modelnet40:{split}", source=str(base))


def shape_class(shape_id: str, class_names: list[str], list_path: Path) -> str:
    """'night_stand_0012' -> 'night_stand': strip only the last '_<digits>', as names hold '_' too."""
    name, _, number = shape_id.rpartition("_")
    if not name or not number.isdigit():
        raise DataFormatError(f"{list_path}: shape id {shape_id!r} is not '<class>_<number>'")
    if name not in class_names:
        raise DataFormatError(f"{list_path}: shape id {shape_id!r} names class {name!r}, "
                              "which is not in modelnet40_shape_names.txt")
    return name


def read_text_cloud(path: Path) -> np.ndarray:
    """xyz (N, 3) float32 of one comma-separated x,y,z,nx,ny,nz file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # an empty file: reported below instead
            xyz = np.loadtxt(path, delimiter=",", dtype=np.float32, usecols=(0, 1, 2), ndmin=2)
    except (ValueError, OSError) as exc:
        raise DataFormatError(f"{path}: expected rows 'x,y,z,nx,ny,nz': {exc}") from exc
    bad = int((~np.isfinite(xyz).all(axis=1)).sum())
    if bad:
        # Checked here because FPS might skip the bad rows and hide them.
        raise DataFormatError(f"{path}: {bad} of {len(xyz)} points hold NaN/inf")
    return xyz


def sample_text_clouds(files: list[Path], num_points: int, progress: bool,
                       device: torch.device, batch_size: int) -> np.ndarray:
    out = np.empty((len(files), num_points, 3), np.float32)
    with progress_bar(None, progress, total=len(files), desc="ModelNet40 text", unit="shape") as bar:
        for start in range(0, len(files), batch_size):
            batch = []
            for path in files[start:start + batch_size]:
                batch.append(read_text_cloud(path))
                bar.update(1)
            sample_batch(batch, files[start:start + batch_size], num_points, device,
                         out[start:start + len(batch)])
    return out


def sample_batch(clouds: list[np.ndarray], files: list[Path], num_points: int,
                 device: torch.device, out: np.ndarray) -> None:
    """FPS over clouds, batched by point count (FPS needs equal-sized clouds), into out."""
    by_count = defaultdict(list)
    for index, cloud in enumerate(clouds):
        if len(cloud) < num_points:
            raise DataFormatError(f"{files[index]}: {len(cloud)} points, fewer than the {num_points} asked for")
        by_count[len(cloud)].append(index)
    for indices in by_count.values():
        stacked = torch.from_numpy(np.stack([clouds[i] for i in indices])).to(device)
        chosen = farthest_point_sample(stacked, num_points, start="first", min_norm_sq=0.0)
        out[indices] = gather_points(stacked, chosen).cpu().numpy()


# --- pickled FPS cache -------------------------------------------------------

def read_modelnet40_dat(path: str | Path, allow_pickle: bool = False) -> PointSplit:
    """Read Point-BERT's pickled cache; only with allow_pickle=True, and only numpy content."""
    path = Path(path)
    content = load_pickle_opted_in(path, allow_pickle, DAT_LAYOUT)
    if not isinstance(content, (list, tuple)) or len(content) != 2:
        raise DataFormatError(f"{path}: expected [list of point arrays, list of labels]\n{DAT_LAYOUT}")
    clouds, labels = content
    if len(clouds) != len(labels):
        raise DataFormatError(f"{path}: {len(clouds)} point clouds but {len(labels)} labels")
    points = stack_xyz_clouds(clouds, path, "point cloud")
    return PointSplit(normalize_to_unit_sphere(points), stack_scalar_labels(labels, path, "label"),
                      list(MODELNET40_CLASSES), name=f"modelnet40/{path.stem}", source=str(path))


# --- PointNet HDF5 release ---------------------------------------------------

def read_modelnet40_h5(root: str | Path, split: str) -> PointSplit:
    """Concatenate ply_data_<split>*.h5 in sorted order; each file is validated on its own first."""
    directory = require_path(Path(root) / "modelnet40_ply_hdf5_2048", HDF5_LAYOUT, "directory")
    pattern = f"ply_data_{check_split(split)}*.h5"
    files = sorted(directory.glob(pattern))
    if not files:
        raise DataFormatError(f"no files match {directory / pattern}\nexpected layout:\n{HDF5_LAYOUT}")
    parts = [read_modelnet40_h5_file(path) for path in files]
    return PointSplit(np.concatenate([p.points for p in parts]), np.concatenate([p.labels for p in parts]),
                      list(MODELNET40_CLASSES), name=f"modelnet40_h5:{split}", source=str(directory / pattern))


def read_modelnet40_h5_file(path: Path) -> PointSplit:
    with open_hdf5(path) as handle:
        points, labels = read_hdf5_clouds(handle, path)
    return PointSplit(points, labels, list(MODELNET40_CLASSES), source=str(path))
