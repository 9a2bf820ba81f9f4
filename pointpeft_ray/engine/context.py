"""Where the training loop runs: the only thing that differs between running
in-process, on a Ray Train worker, or in a Ray Tune trial.

A context gives the rank, world size and device, wraps the model (DDP under Ray
Train), saves and restores the run state, and receives each epoch's metrics.

Two checkpoints are kept: the last one (what a resumed run continues from) and the
best one (highest validation accuracy), which also holds the usable model artefact
(an adapter directory for PEFT, the classifier's weights otherwise).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from ..atomic import atomic_directory, atomic_file, recover
from ..file_names import BEST_DIR, LAST_DIR, RUN_STATE_FILE


@dataclass
class Snapshot:
    """How to write the run at this point: `state` for resuming, `export` for using the model."""

    state: Callable[[], dict]
    export: Callable[[Path], None]

    def write(self, directory: Path, export: bool) -> None:
        save_state(self.state(), directory / RUN_STATE_FILE)
        if export:
            self.export(directory)


class InProcessContext:
    """Single process; checkpoints (if a run directory is given) under run_dir/last and run_dir/best."""

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
        recover(self.run_dir / LAST_DIR)  # a crash while replacing it: the previous one comes back
        path = self.run_dir / LAST_DIR / RUN_STATE_FILE
        return load_state(path) if path.is_file() else None

    def report(self, metrics: dict, snapshot: Snapshot | None, is_best: bool = False) -> None:
        if self.run_dir is not None and snapshot is not None:
            with atomic_directory(self.run_dir / LAST_DIR) as staging:
                snapshot.write(staging, export=False)
            if is_best:
                with atomic_directory(self.run_dir / BEST_DIR) as staging:
                    # The best epoch is this one: share the state file just written.
                    os.link(self.run_dir / LAST_DIR / RUN_STATE_FILE, staging / RUN_STATE_FILE)
                    snapshot.export(staging)
        if self.on_report is not None:
            self.on_report(metrics)


class RayTrainContext:
    """Inside a Ray Train worker: ranks and devices from Ray, checkpoints through ray.train.report.

    Every checkpoint carries `checkpoint_score` (the validation accuracy when the epoch
    is a new best, else -1): with CheckpointConfig(num_to_keep=1, score attribute), Ray
    keeps exactly the best checkpoint plus the latest one.
    """

    def __init__(self, on_report: Optional[Callable[[dict], None]] = None):
        import ray.train
        import ray.train.torch

        self.on_report = on_report  # called on rank 0 only
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

        return state_of(ray.train.get_checkpoint())

    def report(self, metrics: dict, snapshot: Snapshot | None, is_best: bool = False) -> None:
        import ray.train

        if self.on_report is not None and self.rank == 0:
            self.on_report(metrics)
        metrics = {**metrics, "checkpoint_score": metrics.get("val_accuracy", -1.0) if is_best else -1.0,
                   "node_id": node_id()}
        if snapshot is None or self.rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="pointpeft-ckpt-") as directory:
            snapshot.write(Path(directory), export=is_best)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


class TuneTrialContext:
    """Inside a Ray Tune trial (one worker: the loop runs in the trial's own process).
    Checkpoints through ray.tune.report; a retried or resumed trial restores from the
    latest one. The device is the trial's GPU when it was given (a share of) one."""

    rank = 0
    world_size = 1

    def __init__(self, on_report: Optional[Callable[[dict], None]] = None):
        import ray

        self.device = torch.device("cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu")
        self.on_report = on_report

    def wrap_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def restore(self) -> dict | None:
        import ray.tune

        return state_of(ray.tune.get_checkpoint())

    def report(self, metrics: dict, snapshot: Snapshot | None, is_best: bool = False) -> None:
        import ray.tune

        if self.on_report is not None:
            self.on_report(metrics)
        metrics = {**metrics, "node_id": node_id()}
        if snapshot is None:
            ray.tune.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="pointpeft-trial-") as directory:
            # A trial keeps its last checkpoint for retries; the search's product is the
            # table of results and best_config.yaml (retrain it), not per-trial exports.
            snapshot.write(Path(directory), export=False)
            ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(directory))


def node_id() -> str:
    """The Ray node this runs on (several nodes may share one IP address)."""
    import ray

    return ray.get_runtime_context().get_node_id()


def save_state(state: dict, path: Path) -> None:
    with atomic_file(path) as tmp:
        torch.save(state, tmp)


def state_of(checkpoint) -> dict | None:
    """The run state inside a Ray (Train or Tune) checkpoint, or None without one."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return load_state(Path(directory) / RUN_STATE_FILE)


def load_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)
