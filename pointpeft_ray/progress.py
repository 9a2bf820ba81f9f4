"""Progress bars only where someone watches them.

A bar redraws many times a second; in a log file (a Ray worker's output forwarded to the
driver, CI, `| tee`) every redraw becomes a line. So bars show only when stderr is a
terminal; elsewhere the stage's one-line summary (printed by its caller) says it finished.
POINTPEFT_PROGRESS=1 / 0 forces them on / off.
"""
from __future__ import annotations

import os
import sys


def interactive() -> bool:
    forced = os.environ.get("POINTPEFT_PROGRESS")
    if forced in ("0", "1"):
        return forced == "1"
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress_bar(iterable=None, enabled: bool = True, **kwargs):
    """tqdm over `iterable` where a terminal shows it; otherwise a bar that draws nothing."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not (enabled and interactive()), **kwargs)
