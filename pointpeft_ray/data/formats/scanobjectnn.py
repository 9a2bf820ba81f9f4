"""ScanObjectNN HDF5 release (h5_files/main_split*/...)."""
from __future__ import annotations

from pathlib import Path

from ...errors import ConfigError, DataFormatError
from ..split import PointSplit
from ._checks import check_split, open_hdf5, read_hdf5_clouds, read_hdf5_key, require_path
from .class_names import SCANOBJECTNN_CLASSES

# variant -> (directory, file name suffix after "{training,test}_objectdataset")
VARIANT_FILES = {
    "obj_bg": ("main_split", ""),
    "obj_only": ("main_split_nobg", ""),
    "pb_t50_rs": ("main_split", "_augmentedrot_scale75"),
}

LAYOUT = """<root>/main_split/{training,test}_objectdataset.h5                        (obj_bg)
<root>/main_split_nobg/{training,test}_objectdataset.h5                   (obj_only)
<root>/main_split/{training,test}_objectdataset_augmentedrot_scale75.h5   (pb_t50_rs)
each with keys 'data' (n x 2048 x 3 float), 'label' (n int), optional 'mask' (n x 2048)"""


def variant_key(variant: str) -> str:
    """'PB_T50_RS' and 'pb-t50-rs' both mean pb_t50_rs."""
    key = variant.lower().replace("-", "_")
    if key not in VARIANT_FILES:
        raise ConfigError(f"ScanObjectNN variant must be one of {sorted(VARIANT_FILES)}, got {variant!r}")
    return key


def scanobjectnn_path(root: str | Path, variant: str, split: str) -> Path:
    directory, suffix = VARIANT_FILES[variant_key(variant)]
    stem = "training" if check_split(split) == "train" else "test"
    return Path(root) / directory / f"{stem}_objectdataset{suffix}.h5"


def read_scanobjectnn(root: str | Path, variant: str, split: str) -> PointSplit:
    path = require_path(scanobjectnn_path(root, variant, split), LAYOUT)
    with open_hdf5(path) as handle:
        points, labels = read_hdf5_clouds(handle, path)
        mask = read_hdf5_key(handle, path, "mask", required=False)
    extras = {}
    if mask is not None:
        if mask.shape != points.shape[:2]:
            raise DataFormatError(
                f"{path}: key 'mask' must have shape {points.shape[:2]} like 'data', found {mask.shape}"
            )
        extras["mask"] = mask
    return PointSplit(points, labels, list(SCANOBJECTNN_CLASSES),
                      name=f"scanobjectnn/{variant_key(variant)}:{split}", source=str(path), extras=extras)
