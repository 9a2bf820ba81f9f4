"""One progress line for a running search: at every trial that ends and at least every
30 s, how many trials are done, running and left, the best accuracy so far, and the time
spent and (roughly) left. Ray Tune's own table is off (verbose=0): it redraws a screenful."""
from __future__ import annotations

import logging
import time

from ray.tune import Callback

from .recorder import METRIC

logger = logging.getLogger(__name__)


class SearchProgress(Callback):
    def __init__(self, samples: int, max_epochs: int, every_s: float = 30.0):
        self.samples, self.max_epochs, self.every_s = samples, max_epochs, every_s
        self.epochs: dict[str, int] = {}  # trial -> epochs reported
        self.ended: dict[str, str] = {}  # trial -> completed | stopped | failed
        self.best: tuple[float, str] | None = None
        self.start = self.last_line = time.time()

    def setup(self, **info) -> None:
        self.start = self.last_line = time.time()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.epochs[trial.trial_id] = int(result.get("epoch", 0))
        accuracy = result.get(METRIC)
        if accuracy is not None and (self.best is None or accuracy > self.best[0]):
            self.best = (float(accuracy), trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        stopped = self.epochs.get(trial.trial_id, 0) < self.max_epochs
        self.ended[trial.trial_id] = "stopped" if stopped else "completed"
        self._print()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.ended[trial.trial_id] = "failed"
        self._print()

    def on_step_end(self, iteration, trials, **info) -> None:
        if time.time() - self.last_line >= self.every_s:
            self._print()

    def line(self) -> str:
        done = len(self.ended)
        running = [t for t in self.epochs if t not in self.ended]
        counts = ", ".join(f"{sum(1 for s in self.ended.values() if s == kind)} {kind}"
                           for kind in ("completed", "stopped", "failed") if kind in self.ended.values())
        best = f"best {self.best[0]:.1f} ({self.best[1]})" if self.best else "no accuracy yet"
        elapsed = time.time() - self.start
        # trials' worth of work done: the ended ones, and the running ones by their share of epochs
        progress = done + sum(min(1.0, self.epochs[t] / self.max_epochs) for t in running)
        left = f", ~{_duration(elapsed * (self.samples - progress) / progress)} left" if progress > 0 else ""
        return (f"[tune] {done}/{self.samples} trials done{f' ({counts})' if counts else ''}, {len(running)} running; "
                f"{best}; {_duration(elapsed)} elapsed{left}")

    def _print(self) -> None:
        self.last_line = time.time()
        logger.info(self.line())


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
