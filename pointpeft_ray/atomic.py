"""Atomic writes: build under a temporary name, then rename into place, so a file or
directory under its final name is always complete (caches, checkpoints, tables).

A crash or Ctrl-C mid-write leaves only a dot-prefixed temporary behind, which
readers never look at.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _temp_name(path: Path, suffix: str = ".tmp") -> Path:
    # pid + thread id: two writers of the same file never share a temporary.
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}{suffix}")


@contextmanager
def atomic_file(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yields a temporary path beside `path`; renamed onto `path` if the block succeeds.
    `suffix` keeps an extension for writers that infer the format from it (e.g. ".png")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> Path:
    """A text file written whole or not at all (see atomic_file)."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return Path(path)


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yields an empty staging directory; swapped in for `path` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield staging
        _swap_in(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _swap_in(staging: Path, path: Path) -> None:
    if path.exists():
        old = _temp_name(path, ".old")
        os.replace(path, old)
        os.replace(staging, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, path)
