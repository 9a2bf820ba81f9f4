"""Atomic writes: build under a temporary name, then rename into place, so a file or
directory under its final name is always complete (caches, checkpoints, tables).

A crash at any point (kill -9 included) leaves only dot-prefixed temporaries beside
the target, which readers never look at. Temporaries carry the writer's host and pid:
the next write of the same target removes those whose writer has died on this host.
Replacing a directory takes two renames; a crash between them leaves the previous
directory under a `.old` name, which `recover` (run by every write, and by readers that
resume from a directory) puts back. docs/guide.md, "Faults and what is kept".
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import WriteError

_HOST = socket.gethostname().replace(".", "_")


def _owner() -> str:
    return f"{_HOST}-{os.getpid()}"


def _temp_name(path: Path, suffix: str = ".tmp") -> Path:
    # host + pid + thread: two writers of the same file never share a temporary.
    return path.with_name(f".{path.name}.{_owner()}-{threading.get_ident()}{suffix}")


@contextmanager
def atomic_file(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yields a temporary path beside `path`; renamed onto `path` if the block succeeds.
    `suffix` keeps an extension for writers that infer the format from it (e.g. ".png")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path)
    tmp = _temp_name(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:  # e.g. a full disk: name the file, say nothing was replaced
        raise WriteError(f"{path}: could not be written ({err.strerror or err}); "
                         "the previous version, if any, is unchanged") from err
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
    recover(path)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_owner()}-", suffix=".tmp", dir=path.parent))
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
        os.replace(staging, path)  # a crash just before this: `recover` puts `old` back
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, path)


def recover(path: str | Path) -> None:
    """Clean up after writers of `path` that died mid-write on this host: put back a
    directory a crash left under its `.old` name (when `path` is missing), and remove
    their temporaries. Writers still alive, or on other hosts, are left alone."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    for leftover in sorted(path.parent.glob(glob.escape(f".{path.name}.{_HOST}-") + "*")):
        if _writer_alive(leftover.name[len(path.name) + len(_HOST) + 3:]):
            continue
        if leftover.name.endswith(".old") and not path.exists():
            os.replace(leftover, path)
        elif leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _writer_alive(rest: str) -> bool:
    """`rest`: what follows `.NAME.HOST-` in a temporary's name, starting with the pid."""
    pid = rest.split("-", 1)[0]
    if not pid.isdigit():
        return True  # not one of ours: leave it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
