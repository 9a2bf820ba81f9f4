"""Atomic Arrow IPC files: written under a temporary name and renamed, so a file
under its final name is always complete (bank caches, split caches)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from .atomic import atomic_file


def write_ipc_atomic(table: pa.Table, path: Path) -> Path:
    with atomic_file(path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            # One record batch: readers then get each column as a single buffer.
            writer.write_table(table, max_chunksize=max(1, table.num_rows))
    return path


def fixed_size_list(values) -> pa.Array:
    """(rows, ...) array -> one Arrow fixed-size-list per row; 1-D stays a plain column."""
    values = np.asarray(values)
    flat = pa.array(values.reshape(-1))
    if values.ndim == 1:
        return flat
    return pa.FixedSizeListArray.from_arrays(flat, int(np.prod(values.shape[1:])))


def column_numpy(table: pa.Table, name: str) -> np.ndarray:
    """A column's values as a flat numpy array, zero-copy from a memory-mapped file."""
    column = table.column(name)
    array = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    if pa.types.is_fixed_size_list(array.type):
        array = array.flatten()
    return array.to_numpy(zero_copy_only=True)
