"""From a TrainConfig to the pieces a run needs: model, optimizer, schedule."""
from __future__ import annotations

import logging
import math

import torch
from torch import nn

from ..models import FullFinetuneClassifier, PointMAEBackbone, get_peft_model, load_checkpoint
from ..models.peft.model import PointPEFTModel
from ..errors import ConfigError
from .config import ScheduleSection, TrainConfig

logger = logging.getLogger(__name__)


def build_model(config: TrainConfig, num_classes: int, pretrained=None) -> nn.Module:
    """peft: frozen backbone + Point-PEFT; full: everything trains; linear: only the head trains.
    `pretrained`: the tensors of config.model.checkpoint already read (else read from the file)."""
    backbone_config = config.model.backbone
    if config.mode == "peft":
        backbone = PointMAEBackbone(backbone_config)
        _load_pretrained(backbone, config, pretrained)
        return get_peft_model(backbone, config.peft, num_classes)
    model = FullFinetuneClassifier(backbone_config, num_classes)
    _load_pretrained(model, config, pretrained)
    if config.mode == "linear":
        freeze_all_but_head(model)
    return model


def _load_pretrained(module: nn.Module, config: TrainConfig, pretrained=None) -> None:
    if config.model.checkpoint:
        report = load_checkpoint(module, config.model.checkpoint, state=pretrained)
        logger.info(f"[model] {report}")


def freeze_all_but_head(model: FullFinetuneClassifier) -> None:
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith("cls_head_finetune."))
    model.linear_probe = True


def set_train_mode(model: nn.Module, training: bool) -> None:
    """Train mode, with frozen parts kept deterministic: a linear probe's backbone
    stays in eval (BatchNorm statistics and drop-path off). PEFT models handle
    their own frozen BatchNorm."""
    model.train(training)
    inner = unwrap(model)
    if training and getattr(inner, "linear_probe", False):
        for name, module in inner.named_children():
            if name != "cls_head_finetune":
                module.eval()


def parameter_groups(model: nn.Module, weight_decay: float, recipe: str = "ours") -> list[dict]:
    """No weight decay on 1-D parameters and biases; ours also spares every learned
    token (cls token and position, prompt tokens). The published rule spares names
    holding 'token' only, which leaves the prompt tokens (`prompt_embeddings`),
    cls_pos and the prompt coordinates decayed: in our names, only the cls token."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if recipe == "published":
            spared = name.endswith("cls_token")
        else:
            spared = "token" in name or name.endswith("cls_pos")
        if param.ndim <= 1 or name.endswith(".bias") or spared:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(groups: list[dict], lr: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW; on a GPU the fused kernel, one launch for every tensor, which also skips a
    non-finite step on the device (engine/loop.py StepGuard) without a host sync."""
    return torch.optim.AdamW(groups, lr=lr, fused=device.type == "cuda")


def lr_at(epoch: int, schedule: ScheduleSection, recipe: str = "ours") -> float:
    """The learning rate of (0-based) `epoch`.

    Ours: linear warm-up from warmup_start_lr over warmup_epochs, then cosine from
    lr to min_lr over the remaining epochs. Published (timm CosineLRScheduler, stepped
    after each epoch): epoch e trains at f(max(e - 1, 0)), where f warms up the same
    way and its cosine counts from epoch 0 over all `epochs`.
    """
    o = schedule
    step = max(epoch - 1, 0) if recipe == "published" else epoch
    if step < o.warmup_epochs:
        return o.warmup_start_lr + (o.lr - o.warmup_start_lr) * step / o.warmup_epochs
    if recipe == "published":
        if step >= o.epochs:
            return o.min_lr
        return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1 + math.cos(math.pi * step / o.epochs))
    progress = (step - o.warmup_epochs) / max(1, o.epochs - o.warmup_epochs)
    return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1 + math.cos(math.pi * progress))


def trainable_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def per_worker_batch(batch_size: int, world_size: int) -> int:
    """optim.batch_size is the global batch: N workers each take 1/N of it, so a
    multi-worker run follows the same optimisation path as one worker."""
    if batch_size % world_size:
        raise ConfigError(f"optim.batch_size ({batch_size}) must be divisible by the number of workers ({world_size})")
    return batch_size // world_size


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def forward(model: nn.Module, points: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    if isinstance(unwrap(model), PointPEFTModel):
        return model(points, sample_index=index)
    return model(points)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (or the model itself)."""
    return getattr(model, "module", model)
