"""Where the training loop runs: the only thing that differs between running
in-process, on a Ray Train worker, or in a Ray Tune trial.

A context gives the rank, world size and device, wraps the model (DDP under Ray
Train), saves and restores the run state, and receives each epoch's metrics.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

STATE_FILE = "run_state.pt"
StateFn = Callable[[], dict]


class InProcessContext:
    """Single process; checkpoints (if a run directory is given) under run_dir/checkpoint."""

    rank = 0
    world_size = 1

    def __init__(self, run_dir: str | Path | None, device: torch.device,
                 on_report: Optional[Callable[[dict], None]] = None):
        self.run_dir = Path(run_dir) if run_dir else None
        self.device = device
        self.on_report = on_report

    def wrap_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def restore(self) -> dict | None:
        if self.run_dir is None:
            return None
        path = self.run_dir / "checkpoint" / STATE_FILE
        return load_state(path) if path.is_file() else None

    def report(self, metrics: dict, state_fn: StateFn | None) -> None:
        if self.run_dir is not None and state_fn is not None:
            save_state(state_fn(), self.run_dir / "checkpoint" / STATE_FILE)
        if self.on_report is not None:
            self.on_report(metrics)


class RayTrainContext:
    """Inside a Ray Train worker: ranks and devices from Ray, checkpoints through ray.train.report."""

    def __init__(self):
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()

    def wrap_model(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        # DDP over the trainable parameters only: frozen ones take no gradient.
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": False})

    def restore(self) -> dict | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            return load_state(Path(directory) / STATE_FILE)

    def report(self, metrics: dict, state_fn: StateFn | None) -> None:
        import ray.train

        if state_fn is None or self.rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="pointpeft-ckpt-") as directory:
            save_state(state_fn(), Path(directory) / STATE_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


def save_state(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)
