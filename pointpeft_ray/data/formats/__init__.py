"""Readers for the public point-cloud dataset formats (docs/method.md, "Dataset formats").

Each returns a validated PointSplit (xyz float32, int64 labels, class names,
source = the path read) and turns bad input into a DataFormatError that names
the file and the expected layout. Pickled formats load only with allow_pickle=True,
through safe_unpickle, which admits numpy arrays and plain containers only.
"""
from .class_names import MODELNET40_CLASSES, SCANOBJECTNN_CLASSES
from .fewshot import read_fewshot
from .modelnet40 import read_modelnet40_dat, read_modelnet40_h5, read_modelnet40_text
from .safe_pickle import safe_unpickle
from .scanobjectnn import read_scanobjectnn
from .shapenet55 import read_shapenet55

__all__ = [
    "read_scanobjectnn", "read_modelnet40_text", "read_modelnet40_dat", "read_modelnet40_h5",
    "read_fewshot", "read_shapenet55", "safe_unpickle", "MODELNET40_CLASSES", "SCANOBJECTNN_CLASSES",
]
