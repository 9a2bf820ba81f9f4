"""The fine-tuning loop: a plain function of a TrainConfig.

The same function runs in-process, under a Ray TorchTrainer worker and inside a Ray
Tune trial; the run context (engine.epochs.RunContext) is what differs: rank and world
size for data sharding, the device, model wrapping, and where checkpoints go. Restoring,
the schedule and the per-epoch report are engine.epochs.EpochLoop, shared with pre-training.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..data.cache import default_cache_dir
from ..data.loader import BatchLoader
from ..data.tasks import get_task, load_task_split, task_loader
from ..data.transforms import Voting
from ..errors import PointPEFTError
from ..file_names import ADAPTER_DIR, MEMORY_BANKS_DIR, MODEL_FILE
from ..logs import quiet
from ..models.peft.memory_bank import MemoryBank
from ..models.peft.model import PointPEFTModel
from . import build
from .acceleration import compile_model
from .config import TrainConfig
from .epochs import EpochLoop, context_for
from .tensorboard import ScalarLogger

Reporter = Callable[[dict], None]
logger = logging.getLogger(__name__)


class TrainingDivergedError(PointPEFTError):
    """The loss became NaN or infinite."""


@dataclass
class RunResult:
    best_accuracy: float = 0.0
    best_epoch: int = -1
    final: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    trainable_params: int = 0
    total_params: int = 0
    wall_seconds: float = 0.0
    setup_seconds: float = 0.0  # from the call to the first epoch: data, model, bank, restore
    bank_seconds: float = 0.0


def voted_logits(model, points: torch.Tensor, voting: Voting, gen: torch.Generator) -> torch.Tensor:
    """Logits averaged over the voting views of `points` (one view: the points as given)."""
    inputs = voting.views_of(points, gen)
    return torch.stack([build.forward(model, v, None).float() for v in inputs]).mean(0)


def evaluate(model, loader, device, num_classes: int, voting: Voting | None = None, seed: int = 0) -> dict:
    """Overall accuracy, mean class accuracy, per-class accuracy and loss.

    Under DDP each rank evaluates its own shard (unpadded: every sample counts once)
    with the unwrapped model, and the counts are summed across ranks.
    """
    model = build.unwrap(model)
    build.set_train_mode(model, False)
    correct = torch.zeros(num_classes, dtype=torch.float64, device=device)
    total = torch.zeros(num_classes, dtype=torch.float64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for batch in loader:
            batch = batch.to(device)
            logits = voted_logits(model, batch.points, voting or Voting(1), gen)
            loss_sum += F.cross_entropy(logits, batch.labels, reduction="sum")
            total.index_add_(0, batch.labels, torch.ones_like(batch.labels, dtype=torch.float64))
            hits = (logits.argmax(-1) == batch.labels).double()
            correct.index_add_(0, batch.labels, hits)
    sums = sum_across_ranks(torch.cat([correct, total, loss_sum.view(1)]))
    correct, total, loss_sum = sums[:num_classes].numpy(), sums[num_classes:-1].numpy(), float(sums[-1])
    present = total > 0
    per_class = np.divide(correct, total, out=np.zeros_like(correct), where=present)
    # Plain floats: metrics go to JSON, Arrow tables and weights-only checkpoints.
    return {
        "accuracy": float(100.0 * correct.sum() / max(1, total.sum())),
        "mean_class_accuracy": float(100.0 * per_class[present].mean()) if present.any() else 0.0,
        "per_class_accuracy": [float(v) for v in 100.0 * per_class],
        "loss": float(loss_sum / max(1, total.sum())),
    }


def sum_across_ranks(values: torch.Tensor) -> torch.Tensor:
    """All-reduce (sum) when running under torch.distributed; returned on the CPU."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values)
    return values.cpu()


def train(config: TrainConfig, report: Optional[Reporter] = None, context=None,
          bank: MemoryBank | None = None, pretrained=None) -> RunResult:
    """Fine-tune per `config`. `context` says where this runs (in-process by default,
    checkpointing under config.run_dir); `report` receives each epoch's metrics.
    `bank`: a memory bank built beforehand (by the Ray driver), else built or read
    from the cache here. `pretrained`: the tensors of config.model.checkpoint already
    read (handed over through Ray's object store), else read from the file."""
    start_time = time.perf_counter()
    context = context_for(context, config.run_dir, config.device, report)
    device = context.device
    task, train_data, test_data = load_run_data(config)
    model = build_seeded_model(config, train_data.num_classes, pretrained).to(device)
    bank_start = time.perf_counter()
    if config.uses_memory_bank():
        if bank is not None:
            model.attach_memory_bank(bank)
            logger.info(f"[bank] {len(bank)} rows, handed over by the driver")
        else:
            attach_cached_memory_bank(model, task, train_data, config)
    result = RunResult(trainable_params=build.trainable_count(model),
                       total_params=sum(p.numel() for p in model.parameters()),
                       bank_seconds=time.perf_counter() - bank_start)
    model = context.wrap_model(compile_model(model, config.compile))
    optimizer = build.make_optimizer(build.parameter_groups(model, config.optim.weight_decay, config.recipe),
                                     config.optim.lr, device)
    loop = _epoch_loop(context, model, optimizer, config, result)
    batch_size = build.per_worker_batch(config.optim.batch_size, context.world_size)
    train_loader = task_loader(task, train_data, "train", batch_size, seed=config.seed, rank=context.rank,
                               world_size=context.world_size, augment=config.data.augment, recipe=config.recipe)
    # test-time views (the config's, else the task's), made as the run's recipe does
    voting = Voting(config.data.voting_views or task.voting_views, config.recipe, task.num_points)
    test_loader = task_loader(task, test_data, "test", batch_size, rank=context.rank, world_size=context.world_size,
                              all_points=voting.draws_points)
    use_bf16 = config.bf16 and device.type == "cuda"
    scalars = ScalarLogger(config.tensorboard_dir() if context.rank == 0 else None)
    result.setup_seconds = time.perf_counter() - start_time
    try:
        for epoch, lr in loop.epochs(config.optim.epochs):
            train_stats = _train_epoch(model, optimizer, train_loader, epoch, config, device, use_bf16)
            metrics = {"epoch": epoch + 1, "lr": lr, **{f"train_{k}": v for k, v in train_stats.items()},
                       "trainable_params": result.trainable_params,
                       # start-up cost of this run (data, model, bank): what a search pays per trial
                       "setup_seconds": result.setup_seconds, "bank_seconds": result.bank_seconds}
            is_best = False
            if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.optim.epochs:
                eval_start = time.perf_counter()
                evaluation = evaluate(model, test_loader, device, num_classes=train_data.num_classes,
                                      voting=voting, seed=config.seed)
                evaluation["seconds"] = time.perf_counter() - eval_start
                metrics.update({f"val_{k}": v for k, v in evaluation.items() if k != "per_class_accuracy"})
                metrics["val_per_class_accuracy"] = evaluation["per_class_accuracy"]
                is_best = evaluation["accuracy"] > result.best_accuracy or result.best_epoch < 0
                if is_best:
                    result.best_accuracy, result.best_epoch = evaluation["accuracy"], epoch + 1
            metrics["best_accuracy"] = result.best_accuracy
            metrics["best_epoch"] = result.best_epoch
            # since train() was called: under Ray, what the loop took of the run's wall time
            metrics["elapsed_seconds"] = time.perf_counter() - start_time
            scalars.log_epoch(metrics)
            loop.report(metrics, is_best)
    finally:
        scalars.close()
    result.history = loop.history
    result.final = result.history[-1] if result.history else {}
    result.wall_seconds = time.perf_counter() - start_time
    return result


def _epoch_loop(context, model, optimizer, config: TrainConfig, result: RunResult) -> EpochLoop:
    """The run's epochs, restored from its last checkpoint if it has one. What is saved
    to resume: the trained tensors only (PEFT: the small adapter state), plus the progress."""
    inner = build.unwrap(model)
    peft = isinstance(inner, PointPEFTModel)
    loop = EpochLoop(
        context, optimizer, config.optim, config.recipe,
        tensors=lambda: inner.adapter_state_dict() if peft else inner.state_dict(),
        load_tensors=lambda tensors: inner.load_state_dict(tensors, strict=not peft),
        fields=lambda: {"best_accuracy": result.best_accuracy, "best_epoch": result.best_epoch,
                        "trainable_params": result.trainable_params, "total_params": result.total_params},
        export=lambda directory: export_model(model, directory))
    state = loop.restore()
    if state:
        result.best_accuracy, result.best_epoch = state["best_accuracy"], state["best_epoch"]
        logger.info(f"[resume] from epoch {state['epochs_done']} (best {result.best_accuracy:.2f} at "
                    f"{result.best_epoch})")
    return loop


def load_run_data(config: TrainConfig):
    """The task (with its options) and its train / test splits (generated or read into the cache)."""
    task = get_task(config.data.task).with_options(**config.data.options)
    splits = [load_task_split(task, split, config.data.root, config.data.cache_dir, config.data.allow_pickle)
              for split in ("train", "test")]
    return task, *splits


def prepare_run(config: TrainConfig, device: str = "cpu", pretrained=None) -> MemoryBank | None:
    """What every run of `config` shares, made once before they start: the data caches
    and, for PEFT with a bank, the memory bank (returned on the CPU; None without one).
    `pretrained`: the checkpoint's tensors already read (see train)."""
    task, train_data, _ = load_run_data(config)
    if not config.uses_memory_bank():
        return None
    with quiet():  # the runs say which weights they load
        model = build_seeded_model(config, train_data.num_classes, pretrained=pretrained).to(device)
    bank = attach_cached_memory_bank(model, task, train_data, config)
    bank.max_features = bank.max_features.cpu()
    bank.cls_features = None if bank.cls_features is None else bank.cls_features.cpu()
    return bank


def build_seeded_model(config: TrainConfig, num_classes: int, pretrained=None) -> torch.nn.Module:
    """The model for `config`, initialised from config.seed: every Ray worker and the
    driver (which builds the memory bank) get identical weights."""
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    return build.build_model(config, num_classes, pretrained)


def export_model(model, directory: Path) -> None:
    """The usable artefact of a run: the adapter directory (PEFT) or the classifier's weights."""
    inner = build.unwrap(model)
    if isinstance(inner, PointPEFTModel):
        inner.save_adapter(Path(directory) / ADAPTER_DIR)
    else:
        torch.save({k: v.detach().cpu() for k, v in inner.state_dict().items()}, Path(directory) / MODEL_FILE)


def attach_cached_memory_bank(model: PointPEFTModel, task, train_data, config: TrainConfig) -> MemoryBank:
    """Built once per (backbone, dataset, grouping) and cached beside the data cache."""
    loader = BatchLoader(train_data, 64, num_points=task.num_points if train_data.points_per_sample > task.num_points
                         else None, subsample="first")
    cache_dir = Path(config.data.cache_dir or default_cache_dir()) / MEMORY_BANKS_DIR
    dataset_key = f"{train_data.source}|{len(train_data)}|{task.num_points}"
    bank = model.build_memory_bank(loader, cache_dir=cache_dir, dataset_key=dataset_key, progress=False)
    logger.info(f"[bank] {len(bank)} rows, {'cached' if bank.from_cache else f'built in {bank.build_seconds:.1f}s'}")
    return bank


class StepGuard:
    """Backward, clip and step; a NaN/inf loss stops the run and never updates the
    weights, so the last checkpoint stays good. `epoch`, `step`: 0-based.

    Read on the host (the default): each step's loss is read before its update, a sync
    that costs nothing on a CPU. Deferred (a fused optimizer, as on a GPU): a step whose
    loss or gradient norm is non-finite is skipped on the device (the fused optimizer's
    found_inf input, as under a GradScaler; the norm is the all-reduced gradients', so
    every DDP rank skips the same steps), and the first such step is read once, at the
    epoch's end (`check`): a GPU step never waits for the host.
    """

    def __init__(self, optimizer, params: list, grad_clip: float | None, epoch: int, what: str = "loss"):
        self.optimizer, self.params, self.grad_clip = optimizer, params, grad_clip
        self.epoch, self.what = epoch, what
        self.deferred = bool(optimizer.defaults.get("fused"))
        self.loss_sum = None  # sum of loss x samples: a device tensor when deferred
        self.first_bad = None  # deferred: (step, loss) of the first skipped step, on the device

    def step(self, loss: torch.Tensor, step: int, samples: int) -> None:
        if not self.deferred:
            value = loss.item()
            if not math.isfinite(value):
                self._stop(step, value)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.deferred:
            # the all-reduced gradients' norm: every DDP rank skips the same steps
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip or float("inf"))
            value = loss.detach().float()
            bad = ~(torch.isfinite(value) & torch.isfinite(norm))
            if self.first_bad is None:
                self.first_bad = torch.full((2,), float("nan"), device=value.device)
            record = torch.stack([torch.full_like(value, step), value])  # filled on the device: no host copy
            self.first_bad = torch.where(bad & torch.isnan(self.first_bad[0]), record, self.first_bad)
            self.optimizer.found_inf = bad.float()
            value = value.double()
        elif self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        weighted = value * samples
        self.loss_sum = weighted if self.loss_sum is None else self.loss_sum + weighted

    def check(self) -> float:
        """The epoch's summed loss x samples; raises if a deferred step was skipped."""
        if self.deferred and self.first_bad is not None:
            step, value = self.first_bad.tolist()  # the epoch's one read of the guard
            if not math.isnan(step):
                self._stop(int(step), value)
        return float(self.loss_sum) if self.loss_sum is not None else 0.0

    def _stop(self, step: int, value: float) -> None:
        raise TrainingDivergedError(f"{self.what} is {value} at epoch {self.epoch + 1}, step {step + 1}")


def _train_epoch(model, optimizer, loader, epoch: int, config: TrainConfig, device, use_bf16: bool) -> dict:
    build.set_train_mode(model, True)
    loader.set_epoch(epoch)
    guard = StepGuard(optimizer, [p for p in model.parameters() if p.requires_grad], config.optim.grad_clip, epoch)
    seen = 0
    correct = torch.zeros((), dtype=torch.long, device=device)  # summed on device: no sync for it
    start = time.perf_counter()
    for step, batch in enumerate(loader):
        batch = batch.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = build.forward(model, batch.points, batch.index)
        loss = F.cross_entropy(logits.float(), batch.labels, label_smoothing=config.optim.label_smoothing)
        guard.step(loss, step, batch.labels.numel())
        correct += (logits.argmax(-1) == batch.labels).sum()
        seen += batch.labels.numel()
    loss_sum = guard.check()
    seconds = time.perf_counter() - start
    # Over every rank's shard: the epoch's metrics, not rank 0's share of them.
    totals = sum_across_ranks(torch.tensor([loss_sum, float(correct.item()), float(seen)], dtype=torch.float64,
                                            device=device))
    loss_sum, hits, seen = (float(v) for v in totals)
    return {"loss": loss_sum / max(1, seen), "accuracy": 100.0 * hits / max(1, seen),
            "samples_per_second": seen / max(seconds, 1e-9), "seconds": seconds}
