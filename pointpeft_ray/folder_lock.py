"""One writer per results folder: a second run, search or job that would write into a
folder another process is writing refuses at once, before it changes anything
(docs/guide.md, "Faults and what is kept").

The lock is an advisory `flock` on a file inside the folder, so the kernel releases it
when its holder exits, however it exits (kill -9 included): a crashed run never leaves
a folder locked. It is re-entrant within a process (a job holds its folder while its
stages write below it). Storage URIs (s3://, gs://) have no lock: one writer per
folder is then the user's business.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from .errors import PointPEFTError
from .file_names import WRITER_LOCK_FILE


_held: dict[str, list] = {}  # resolved folder -> [file descriptor, depth]
_guard = threading.Lock()


class FolderInUseError(PointPEFTError):
    """Another process is writing the folder."""


@contextmanager
def exclusive_folder(folder: Optional[str | Path], what: str = "folder") -> Iterator[None]:
    """Hold `folder` (created if absent) for writing; None (no local folder) holds nothing.
    `what` names the folder in the refusal, e.g. "search 'lr'"."""
    if folder is None:
        yield
        return
    key = str(Path(folder).resolve())
    with _guard:
        entry = _held.get(key)
        if entry is None:
            entry = _held[key] = [_acquire(Path(key), what), 0]
        entry[1] += 1
    try:
        yield
    finally:
        with _guard:
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                os.close(entry[0])  # closing the descriptor releases the flock


def _acquire(folder: Path, what: str) -> int:
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks to take
        return os.open(os.devnull, os.O_RDONLY)
    folder.mkdir(parents=True, exist_ok=True)
    # No O_TRUNC: a process that fails to get the lock must not wipe the holder's note.
    descriptor = os.open(folder / WRITER_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_note(descriptor)
        os.close(descriptor)
        raise FolderInUseError(
            f"{folder}: {what} is being written by another process ({holder}); wait for it to finish, "
            "or use another name or storage folder (nothing was changed)") from None
    _write_note(descriptor)
    return descriptor


def _write_note(descriptor: int) -> None:
    """Who holds the lock, for the message a refused process prints."""
    note = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)[:300]}
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, json.dumps(note).encode(), 0)


def _read_note(descriptor: int) -> str:
    try:
        note = json.loads(os.pread(descriptor, 4096, 0) or b"{}")
        return f"pid {note['pid']} on {note['host']} since {note['since']}: {note['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "no details recorded"
