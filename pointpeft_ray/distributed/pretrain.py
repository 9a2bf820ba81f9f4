"""Point-MAE pre-training on Ray Train: the in-process loop, run by TorchTrainer workers.

The workers checkpoint their run state through Ray (rerunning a run name
resumes); the driver then writes the Point-MAE `pretrain.pth` from the final
Ray checkpoint, so the file lands on the driver's filesystem even when the
workers run on other machines.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from ..engine.context import RayTrainContext, load_state
from ..errors import PointPEFTError
from ..file_names import PRETRAINED_FILE, RUN_STATE_FILE
from ..folder_lock import exclusive_folder
from ..pretrain.checkpoint import write_pretrain_checkpoint
from ..pretrain.config import PretrainConfig
from ..pretrain.loop import PretrainResult, pretrain
from ..pretrain.mae import PointMAEPretrainModel
from .cluster import ensure_ray
from .train import RayRunSettings, launch, worker_logging

logger = logging.getLogger(__name__)


def _pretrain_worker_loop(loop_config: dict) -> None:
    config = PretrainConfig.from_dict(loop_config["config"])
    worker_logging()
    pretrain(config, context=RayTrainContext())


def fit_pretrain(config: PretrainConfig, settings: RayRunSettings | None = None,
                 address: str | None = None) -> PretrainResult:
    """Pre-train with `settings.workers` Ray Train workers; returns the summary (with the
    checkpoint path). Default output: config.output_path(), else <storage>/<name>/pretrain.pth.
    A run another process is writing is refused (folder_lock)."""
    settings = settings or RayRunSettings(name="pointpeft-pretrain")
    with exclusive_folder(settings.local_run_dir(), f"run {settings.name!r}"):
        return _fit_pretrain(config, settings, address)


def _fit_pretrain(config: PretrainConfig, settings: RayRunSettings, address: str | None) -> PretrainResult:
    import ray.train

    start = time.perf_counter()
    ensure_ray(address)
    settings = settings.resolved()
    storage = settings.storage()
    # Workers write no file of their own; the driver writes it below.
    worker_config = config.replace(output=None, run_dir=None)
    ray_result = launch(_pretrain_worker_loop, {"config": worker_config.model_dump()}, settings.scaling_config(),
                        settings.name, storage, max_failures=settings.max_failures,
                        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2))
    if ray_result.error is not None:
        raise PointPEFTError(f"pre-training failed: {ray_result.error}")
    output = config.output_path() or Path(storage) / settings.name / PRETRAINED_FILE
    result = _result_from_checkpoint(ray_result.checkpoint, output)
    result.total_params = sum(p.numel() for p in PointMAEPretrainModel(config.model.backbone, config.mae).parameters())
    result.wall_seconds = time.perf_counter() - start
    logger.info(f"[pretrain] wrote {result.checkpoint}")
    return result


def _result_from_checkpoint(checkpoint, output: Path) -> PretrainResult:
    if checkpoint is None:
        raise PointPEFTError("pre-training finished without a Ray checkpoint: no weights to write")
    with checkpoint.as_directory() as directory:
        state = load_state(Path(directory) / RUN_STATE_FILE)
    history = list(state["history"])
    path = write_pretrain_checkpoint(state["model"], output, state["epochs_done"])
    return PretrainResult(history=history, final_loss=history[-1]["train_loss"] if history else None,
                          epochs=int(state["epochs_done"]), checkpoint=path)
