"""Parquet files that a reader never sees half-written, on a local path or any pyarrow
filesystem URI (file://, s3://, gs://, hdfs://, ...).

Where the filesystem can rename, the file is written under a temporary name beside its
target and renamed onto it. Object stores (S3, GCS, Azure) have no rename, but publish an
object only when its upload completes, so there the file is written in place.
"""
from __future__ import annotations

import os
import posixpath
import threading
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..atomic import atomic_file, atomic_write_text
from ..errors import ConfigError, ResultsError

# pyarrow filesystem type names without an atomic rename.
OBJECT_STORES = frozenset({"s3", "gcs", "abfs"})


def is_uri(path) -> bool:
    return isinstance(path, str) and "://" in path


def join(folder, name: str) -> str:
    """`name` inside `folder`, a local path or a filesystem URI."""
    return f"{folder.rstrip('/')}/{name}" if is_uri(folder) else str(Path(folder) / name)


def check_storage_path(storage, what: str = "storage path") -> None:
    """A local storage path must be a folder or creatable as one: a file in its place
    (or in place of a parent) is named now, before Ray starts, not as an OSError later."""
    if storage is None or is_uri(storage):
        return
    path = Path(storage).expanduser()
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                where = "" if candidate == path else f" (its parent {candidate} is a file)"
                raise ConfigError(f"{what} {storage}: not a folder{where}; give a folder (created if missing) "
                                  "or a pyarrow.fs URI")
            return


def write_table_atomic(table: pa.Table, path) -> str:
    """Write `table` as Parquet at `path` (a local path or a filesystem URI), atomically."""
    if is_uri(path):
        _publish(path, lambda filesystem, target: pq.write_table(table, target, filesystem=filesystem))
    else:
        with atomic_file(path) as tmp:
            pq.write_table(table, str(tmp))
    return str(path)


def write_text(path, text: str) -> str:
    """Write a text file at `path` (a local path or a filesystem URI), atomically."""
    if is_uri(path):
        def write(filesystem: pafs.FileSystem, target: str) -> None:
            with filesystem.open_output_stream(target) as stream:
                stream.write(text.encode())
        _publish(path, write)
    else:
        atomic_write_text(path, text)
    return str(path)


def _publish(uri: str, write: Callable[[pafs.FileSystem, str], None]) -> None:
    """`write(filesystem, target)` writes the file; it appears at `uri` only once complete."""
    filesystem, path = pafs.FileSystem.from_uri(uri)
    parent, name = posixpath.split(path)
    if parent:
        filesystem.create_dir(parent, recursive=True)
    if filesystem.type_name in OBJECT_STORES:
        write(filesystem, path)
        return
    # pid + thread: concurrent writers of one file never share a temporary.
    tmp = posixpath.join(parent, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        write(filesystem, tmp)
        filesystem.move(tmp, path)
    finally:
        if filesystem.get_file_info(tmp).type != pafs.FileType.NotFound:
            filesystem.delete_file(tmp)


def read_parquet(path) -> pa.Table:
    try:
        if is_uri(path):
            filesystem, inner = pafs.FileSystem.from_uri(path)
            return pq.read_table(inner, filesystem=filesystem)
        return pq.read_table(str(Path(path)))
    except FileNotFoundError:
        raise ResultsError(f"results table not found: {path}") from None
    except pa.ArrowInvalid as err:
        raise ResultsError(f"{path}: not a readable Parquet file ({err})") from None


def upload(local, uri: str) -> None:
    """Copy a local file, or a folder with everything under it, to `uri`."""
    local = Path(local).resolve()
    filesystem, inner = pafs.FileSystem.from_uri(uri)
    folder = inner if local.is_dir() else posixpath.dirname(inner)
    if folder:
        filesystem.create_dir(folder, recursive=True)
    pafs.copy_files(str(local), inner, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=filesystem)


def download_folder(uri: str, local) -> bool:
    """Copy the folder `uri` into the local folder `local`; False when there is none."""
    filesystem, inner = pafs.FileSystem.from_uri(uri)
    if filesystem.get_file_info(inner).type != pafs.FileType.Directory:
        return False
    Path(local).mkdir(parents=True, exist_ok=True)
    pafs.copy_files(inner, str(Path(local).resolve()), source_filesystem=filesystem,
                    destination_filesystem=pafs.LocalFileSystem())
    return True


def download_file(uri: str, local) -> bool:
    """Copy the file at `uri` to the local path `local`; False when there is none."""
    filesystem, inner = pafs.FileSystem.from_uri(uri)
    if filesystem.get_file_info(inner).type != pafs.FileType.File:
        return False
    Path(local).parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(local) as tmp:
        pafs.copy_files(inner, str(Path(tmp).resolve()), source_filesystem=filesystem,
                        destination_filesystem=pafs.LocalFileSystem())
    return True


def exists_at(uri: str) -> bool:
    """Whether anything is at `uri` (a filesystem URI, or a local path)."""
    if not is_uri(uri):
        return Path(uri).exists()
    filesystem, inner = pafs.FileSystem.from_uri(uri)
    return filesystem.get_file_info(inner).type != pafs.FileType.NotFound
