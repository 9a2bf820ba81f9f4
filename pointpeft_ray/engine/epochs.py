"""What fine-tuning and pre-training share around their epochs: where the run happens
(a RunContext), the learning-rate schedule, the run state a rerun resumes from, and the
report of each epoch with its checkpoint (docs/guide.md, "Training").

One mechanism makes a resumed run repeat the uninterrupted one: the run state carries
the RNG state (dropout, drop-path, masks), and the loaders seed their order per epoch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterator, Optional, Protocol

import torch
from torch import nn

from .config import ScheduleSection
from . import build
from .context import InProcessContext, Snapshot

# In the first report after a resume: the restored epochs' metrics (JSON, a list of rows),
# for a record (a search's epochs table) that may have lost the last reports before an
# interruption.
RESTORED_EPOCHS_KEY = "restored_epochs_json"


class RunContext(Protocol):
    """In-process, a Ray Train worker or a Ray Tune trial (engine.context)."""

    rank: int
    world_size: int
    device: torch.device

    def wrap_model(self, model: nn.Module) -> nn.Module: ...

    def restore(self) -> dict | None: ...

    def report(self, metrics: dict, snapshot: Snapshot | None, is_best: bool = False) -> None: ...


def context_for(context: RunContext | None, run_dir: str | None, device: str,
                report: Optional[Callable[[dict], None]]) -> RunContext:
    """The given context, else an in-process one checkpointing under `run_dir`."""
    return context if context is not None else InProcessContext(run_dir, build.resolve_device(device), report)


class EpochLoop:
    """The epochs of one run. `tensors()` / `load_tensors(d)`: what trains (PEFT: the
    adapter state); `fields()`: the run's own progress (e.g. its best accuracy), saved and
    returned by `restore`; `export(dir)`: the usable artefact, in the best checkpoint."""

    def __init__(self, context: RunContext, optimizer, schedule: ScheduleSection, recipe: str = "ours", *,
                 tensors: Callable[[], dict], load_tensors: Callable[[dict], None],
                 fields: Callable[[], dict] = dict, export: Callable[[Path], None] = lambda directory: None):
        self.context, self.optimizer, self.schedule, self.recipe = context, optimizer, schedule, recipe
        self.tensors, self.load_tensors, self.fields = tensors, load_tensors, fields
        self.snapshot = Snapshot(state=self._state, export=export)
        self.history: list[dict] = []
        self.start_epoch = self.epoch = 0

    def restore(self) -> dict:
        """The saved run state ({} for a new run); training continues after its epochs."""
        state = self.context.restore()
        if state is None:
            return {}
        self.load_tensors(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = list(state["history"])
        if "torch_rng" in state:  # run folders written before it was saved resume without it
            torch.set_rng_state(state["torch_rng"])
            if state["cuda_rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.start_epoch = int(state["epochs_done"])
        return state

    def epochs(self, total: int) -> Iterator[tuple[int, float]]:
        """(0-based epoch, its learning rate), already set on the optimizer."""
        for self.epoch in range(self.start_epoch, total):
            lr = build.lr_at(self.epoch, self.schedule, self.recipe)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            yield self.epoch, lr

    def report(self, metrics: dict, is_best: bool = False) -> None:
        """Record the epoch and hand it, with its checkpoint, to the context."""
        reported = metrics
        if self.epoch == self.start_epoch > 0:
            reported = {**metrics, RESTORED_EPOCHS_KEY: json.dumps(self.history, default=float)}
        self.history.append(metrics)
        self.context.report(reported, self.snapshot, is_best)

    def _state(self) -> dict:
        return {
            "model": {k: v.detach().cpu() for k, v in self.tensors().items()},
            "optimizer": self.optimizer.state_dict(),
            "epochs_done": self.epoch + 1,
            "history": self.history,
            **self.fields(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
