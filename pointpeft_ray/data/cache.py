"""The Arrow cache of prepared splits.

One Arrow IPC file per split: a `points` column of fixed-size lists (P * 3
float32), `label`, and optional per-sample extras; the class names, the split
name, its source and the cache key in the schema metadata. The file is
memory-mapped on read, so a worker touches only the rows it samples. It is
written under a temporary name and renamed, so a file under the final name is
always complete; a file whose key differs from the requested one is rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
from filelock import FileLock

from ..arrow_io import column_numpy, fixed_size_list, write_ipc_atomic
from ..errors import DataFormatError
from .split import PointSplit

CACHE_FORMAT_VERSION = 1
_META_KEY = b"pointpeft.split"


def default_cache_dir() -> Path:
    env = os.environ.get("POINTPEFT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "pointpeft-ray"


def cache_path(cache_dir: str | Path, task: str, split: str, key: dict) -> Path:
    safe_task = re.sub(r"[^A-Za-z0-9_.-]+", "_", task)
    digest = hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=10).hexdigest()
    return Path(cache_dir) / safe_task / f"{split}-{digest}.arrow"


def load_or_build(path: Path, key: dict, build: Callable[[], PointSplit]) -> tuple[PointSplit, bool]:
    """The cached split for `key`, or `build()` written to the cache first.

    Returns (split, came_from_cache). Concurrent callers build once.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        cached = _read_if_fresh(path, key)
        if cached is not None:
            return cached, True
        split = build()
        write_split(split, path, key)
        return read_split(path), False


def _read_if_fresh(path: Path, key: dict) -> PointSplit | None:
    if not path.exists():
        return None
    try:
        table, meta = _read_table(path)
    except DataFormatError as err:
        # derived data: rebuilt, but never silently (a damaged disk should be noticed)
        logging.getLogger(__name__).warning("%s: unreadable split cache (%s); rebuilding it", path, err)
        return None
    if meta.get("key") != json.loads(json.dumps(key)) or meta.get("format") != CACHE_FORMAT_VERSION:
        return None
    return _as_split(table, meta, path)


def write_split(split: PointSplit, path: Path, key: dict) -> Path:
    columns = {"points": fixed_size_list(split.points), "label": pa.array(split.labels)}
    columns.update({f"extra.{name}": fixed_size_list(values) for name, values in split.extras.items()})
    meta = {
        "format": CACHE_FORMAT_VERSION,
        "key": key,
        "name": split.name,
        "source": split.source,
        "class_names": list(split.class_names),
        "points_per_sample": split.points_per_sample,
        "count": len(split),
        "extra_shapes": {n: list(np.asarray(v).shape[1:]) for n, v in split.extras.items()},
    }
    table = pa.table(columns).replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
    return write_ipc_atomic(table, path)


def _read_table(path: Path) -> tuple[pa.Table, dict]:
    """The memory-mapped (zero-copy) table and its split metadata."""
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except (pa.ArrowInvalid, OSError) as err:
        raise DataFormatError(f"{path}: not a readable Arrow split cache ({err})") from None
    raw = (table.schema.metadata or {}).get(_META_KEY)
    if raw is None:
        raise DataFormatError(f"{path}: Arrow file without pointpeft split metadata")
    return table, json.loads(raw)


def read_split(path: str | Path) -> PointSplit:
    """Memory-mapped, zero-copy read of a cached split (validated when written)."""
    path = Path(path)
    return _as_split(*_read_table(path), path)


def _as_split(table: pa.Table, meta: dict, path: Path) -> PointSplit:
    count, per_sample = meta["count"], meta["points_per_sample"]
    points = column_numpy(table, "points").reshape(count, per_sample, 3)
    labels = column_numpy(table, "label")
    extras = {
        name: column_numpy(table, f"extra.{name}").reshape(count, *shape)
        for name, shape in meta.get("extra_shapes", {}).items()
    }
    return PointSplit(points, labels, meta["class_names"], name=meta["name"], source=str(path),
                      extras=extras, check=False)
