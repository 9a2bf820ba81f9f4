"""The pre-training loop: a plain function of a PretrainConfig.

Like the fine-tune loop, the same function runs in-process and on Ray Train
workers; the run context supplies rank, device and model wrapping, and
engine.epochs.EpochLoop the restore, schedule and per-epoch report both loops share.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..data.tasks import get_task, load_task_split, task_loader
from ..engine import build
from ..engine.epochs import EpochLoop, context_for
from ..engine.loop import StepGuard, sum_across_ranks
from ..errors import ConfigError
from .checkpoint import write_pretrain_checkpoint
from .config import PretrainConfig
from .mae import PointMAEPretrainModel

Reporter = Callable[[dict], None]
logger = logging.getLogger(__name__)


@dataclass
class PretrainResult:
    history: list = field(default_factory=list)
    final_loss: float | None = None
    epochs: int = 0
    checkpoint: Path | None = None
    total_params: int = 0
    wall_seconds: float = 0.0


def pretrain(config: PretrainConfig, report: Optional[Reporter] = None, context=None) -> PretrainResult:
    """Pre-train per `config`; writes the Point-MAE checkpoint to config.output_path()
    (rank 0). `context` says where this runs (in-process by default, resuming from
    config.run_dir); `report` receives each epoch's metrics in-process."""
    start_time = time.perf_counter()
    context = context_for(context, config.run_dir, config.device, report)
    device = context.device
    torch.manual_seed(config.seed)  # the initial weights, the same on every rank
    task = get_task(config.data.task).with_options(**config.data.options)
    data = load_task_split(task, "train", config.data.root, config.data.cache_dir, config.data.allow_pickle)
    model = PointMAEPretrainModel(config.model.backbone, config.mae).to(device)
    # Masks and drop-path draw from the global RNG: ranks draw differently (a resumed run
    # continues from the RNG state its checkpoint saved).
    torch.manual_seed(int(np.random.SeedSequence([config.seed, context.rank]).generate_state(1)[0]))
    result = PretrainResult(total_params=sum(p.numel() for p in model.parameters()))
    model = context.wrap_model(model)
    inner = build.unwrap(model)
    optimizer = build.make_optimizer(build.parameter_groups(model, config.optim.weight_decay), config.optim.lr, device)
    # No per-epoch export: the weights file is written once at the end (here, or by the Ray
    # driver from the last checkpoint's run state).
    loop = EpochLoop(context, optimizer, config.optim, tensors=inner.state_dict, load_tensors=inner.load_state_dict)
    if loop.restore():
        logger.info(f"[resume] pre-training from epoch {loop.start_epoch}")
    loader = _train_loader(task, data, config, context)
    use_bf16 = config.bf16 and device.type == "cuda"
    for epoch, lr in loop.epochs(config.optim.epochs):
        stats = _train_epoch(model, optimizer, loader, epoch, config, device, use_bf16)
        metrics = {"epoch": epoch + 1, "lr": lr, **{f"train_{k}": v for k, v in stats.items()}}
        if context.rank == 0:
            logger.info(format_epoch(metrics, config.optim.epochs))
        loop.report(metrics)
    result.history = loop.history
    result.epochs = len(result.history)
    result.final_loss = result.history[-1]["train_loss"] if result.history else None
    output = config.output_path()
    if output is not None and context.rank == 0:
        result.checkpoint = write_pretrain_checkpoint(inner.state_dict(), output, result.epochs)
    result.wall_seconds = time.perf_counter() - start_time
    return result


def format_epoch(metrics: dict, total_epochs: int) -> str:
    return (f"[pretrain] epoch {metrics['epoch']:>3}/{total_epochs}  chamfer-l2 {metrics['train_loss']:.5f}  "
            f"lr {metrics['lr']:.2e}  {metrics['train_samples_per_second']:.1f} samples/s  "
            f"{metrics['train_seconds']:.1f}s")


def _train_loader(task, data, config: PretrainConfig, context):
    # optim.batch_size is the global batch, split over the workers (as in fine-tuning).
    batch_size = build.per_worker_batch(config.optim.batch_size, context.world_size)
    loader = task_loader(task, data, "train", batch_size, seed=config.seed,
                         rank=context.rank, world_size=context.world_size, augment=config.data.augment)
    if len(loader) == 0:
        raise ConfigError(f"optim.batch_size ({config.optim.batch_size}) is larger than the {len(data)} training "
                          f"samples of {task.name}: not one full batch per epoch")
    return loader


def _train_epoch(model, optimizer, loader, epoch: int, config: PretrainConfig, device, use_bf16: bool) -> dict:
    model.train()
    loader.set_epoch(epoch)
    guard = StepGuard(optimizer, [p for p in model.parameters() if p.requires_grad], config.optim.grad_clip, epoch,
                      what="pre-training loss")
    seen = 0
    start = time.perf_counter()
    for step, batch in enumerate(loader):
        points = batch.to(device).points
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = model(points)
        guard.step(loss, step, points.shape[0])
        seen += points.shape[0]
    loss_sum = guard.check()
    seconds = time.perf_counter() - start
    # Every rank's share, so the reported loss and throughput cover the whole epoch.
    totals = sum_across_ranks(torch.tensor([loss_sum, float(seen)], dtype=torch.float64, device=device))
    loss_sum, seen = float(totals[0]), int(totals[1])
    return {"loss": loss_sum / max(1, seen), "samples_per_second": seen / max(seconds, 1e-9), "seconds": seconds}
