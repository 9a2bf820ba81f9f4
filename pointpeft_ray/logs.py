"""Console output of the `pointpeft_ray` loggers for the command line and the processes Ray
starts for it (docs/guide.md, "Messages and levels"): plain text, progress to stdout beside
the command's own output, warnings and errors to stderr. `-v` / `-q` set POINTPEFT_LOG_LEVEL,
which Ray's processes inherit (or receive: distributed/cluster.py)."""
from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager

ROOT = "pointpeft_ray"
LEVEL_ENV = "POINTPEFT_LOG_LEVEL"  # DEBUG (-v), INFO (the default) or WARNING (-q)


class ConsoleHandler(logging.StreamHandler):
    # The stream is looked up per message: one replaced later (Ray's worker redirection, pytest's capture) counts.
    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout if record.levelno < logging.WARNING else sys.stderr
        super().emit(record)


def configure(ray_process: bool = False) -> None:
    """One console handler at $POINTPEFT_LOG_LEVEL, however often called (reused Ray workers
    call it per run). `ray_process`: Ray Train gives its workers' root logger a console
    handler too, so the messages stop here rather than show twice."""
    logger = logging.getLogger(ROOT)
    for handler in [h for h in logger.handlers if isinstance(h, ConsoleHandler)]:
        logger.removeHandler(handler)
    logger.addHandler(ConsoleHandler())
    level = os.environ.get(LEVEL_ENV, "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"{LEVEL_ENV}={level!r}: expected DEBUG, INFO, WARNING or ERROR")
    logger.setLevel(level)
    logger.propagate = not ray_process


@contextmanager
def quiet():
    """Below WARNING dropped in the block: progress of runs that are a detail of another
    command (a search's trials, a benchmark's runs)."""
    logger = logging.getLogger(ROOT)
    previous = logger.level
    logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(previous)
