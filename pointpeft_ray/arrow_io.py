"""Atomic Arrow IPC files: written under a temporary name and renamed, so a file
under its final name is always complete (bank caches, split caches)."""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa


def write_ipc_atomic(table: pa.Table, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            # One record batch: readers then get each column as a single buffer.
            writer.write_table(table, max_chunksize=max(1, table.num_rows))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
