"""Independent, deliberately plain re-implementation of the published Point-MAE fine-tune model.

This is a *test oracle*: it mirrors the module structure and attribute names of the
published ``PointTransformer`` (Point-MAE ``models/Point_MAE.py``) so that its
``state_dict()`` has exactly the published key names, and it reproduces the published
grouping behaviour (pointnet2_ops furthest point sampling + brute-force kNN) with slow,
obvious code rather than the batched code of the production package.  Nothing here
imports ``pointpeft_ray``.

Published behaviour reproduced on purpose:

* FPS (pointnet2_ops ``furthest_point_sampling`` CUDA kernel):
    - the first selected index is always 0,
    - the running minimum distances start at 1e10,
    - a point whose squared norm x^2 + y^2 + z^2 is <= 1e-3 is skipped: it is never
      selected after the first pick (it may still *be* index 0),
    - the arg-max uses a strict ``>`` starting from best = -1, so ties go to the lowest
      index (exact for N <= 512, where the kernel uses one thread per point),
    - arithmetic in float32.
* kNN (KNN_CUDA): brute-force squared distances computed from exact coordinate
  differences (no |a|^2 + |b|^2 - 2ab expansion), sorted ascending; the k nearest
  points of each centre (the centre itself included).  Neighbourhoods are made relative
  to their centre; the positional embedding sees the absolute centre.
* Encoder: per-point Conv1d stack, max over the group, the group max concatenated
  *in front of* the per-point features, second Conv1d stack, max over the group.
* Transformer: the positional embedding is added before every block
  (``x = block(x + pos)``); pre-norm blocks; qkv without bias; final LayerNorm.
* Classification feature: concat(cls token, max over patch tokens), then the published
  ``cls_head_finetune`` (with BatchNorm: eval mode uses running statistics).

Checkpoint helpers write the published layouts (``builder.save_checkpoint`` under
``nn.DataParallel`` gives ``module.`` prefixes; pre-training stores the encoder under
``MAE_encoder.``).
"""

from __future__ import annotations

import math
import os
from types import SimpleNamespace
from typing import Iterable

import numpy as np
import torch
from torch import nn

__all__ = [
    "make_config",
    "furthest_point_sample",
    "gather_centres",
    "knn_indices",
    "Group",
    "Encoder",
    "Mlp",
    "Attention",
    "DropPath",
    "Block",
    "TransformerEncoder",
    "TransformerDecoder",
    "MaskTransformer",
    "PointTransformer",
    "PointMAEPretrain",
    "randomize_",
    "published_finetune_checkpoint",
    "save_published_finetune_checkpoint",
    "published_pretrain_checkpoint",
    "save_published_pretrain_checkpoint",
    "published_style_load",
    "HEAD_PREFIX",
    "PRETRAIN_ABSENT_KEYS",
]

#: key prefix of the fine-tune classification head.
HEAD_PREFIX = "cls_head_finetune."
#: fine-tune parameters that a Point-MAE *pre-train* checkpoint does not contain
#: (MaskTransformer has no cls token / cls pos); the head is absent as well.
PRETRAIN_ABSENT_KEYS = ("cls_token", "cls_pos")

_FPS_SKIP_SQNORM = 1e-3
_FPS_INITIAL_DIST = 1e10


def make_config(
    trans_dim: int = 384,
    depth: int = 12,
    num_heads: int = 6,
    num_group: int = 128,
    group_size: int = 32,
    encoder_dims: int | None = None,
    drop_path_rate: float = 0.1,
    cls_dim: int = 15,
    **extra,
) -> SimpleNamespace:
    """An attribute bag shaped like the published EasyDict model config."""
    return SimpleNamespace(
        trans_dim=trans_dim,
        depth=depth,
        num_heads=num_heads,
        num_group=num_group,
        group_size=group_size,
        encoder_dims=trans_dim if encoder_dims is None else encoder_dims,
        drop_path_rate=drop_path_rate,
        cls_dim=cls_dim,
        **extra,
    )


# --------------------------------------------------------------------------- grouping


def _fps_one_cloud(points: np.ndarray, npoint: int, skip_near_origin: bool = True) -> list[int]:
    """Furthest point sampling of one (N, 3) float32 cloud, one point at a time."""
    n = int(points.shape[0])
    xs = [np.float32(v) for v in points[:, 0]]
    ys = [np.float32(v) for v in points[:, 1]]
    zs = [np.float32(v) for v in points[:, 2]]
    # squared norm in float32; the kernel compares it (promoted) against the double 1e-3
    skipped = [
        skip_near_origin and float(xs[i] * xs[i] + ys[i] * ys[i] + zs[i] * zs[i]) <= _FPS_SKIP_SQNORM
        for i in range(n)
    ]
    temp = [np.float32(_FPS_INITIAL_DIST)] * n

    chosen = [0]
    last = 0
    for _ in range(1, npoint):
        x1, y1, z1 = xs[last], ys[last], zs[last]
        best = np.float32(-1.0)
        best_index = 0
        for i in range(n):
            if skipped[i]:
                continue
            dx = xs[i] - x1
            dy = ys[i] - y1
            dz = zs[i] - z1
            d = dx * dx + dy * dy + dz * dz
            if temp[i] < d:
                d = temp[i]
            temp[i] = d
            if d > best:  # strict: the first (lowest) index wins a tie
                best = d
                best_index = i
        chosen.append(best_index)
        last = best_index
    return chosen


def furthest_point_sample(xyz: torch.Tensor, npoint: int, skip_near_origin: bool = True) -> torch.Tensor:
    """(B, N, 3) -> (B, npoint) int64 indices, published pointnet2_ops rules.

    ``skip_near_origin=False`` gives textbook FPS (used only to show a test cloud really
    exercises the skip rule).
    """
    cloud = xyz.detach().to(torch.float32).cpu().numpy()
    rows = [_fps_one_cloud(cloud[b], npoint, skip_near_origin) for b in range(cloud.shape[0])]
    return torch.tensor(rows, dtype=torch.long, device=xyz.device)


def gather_centres(xyz: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(B, N, 3), (B, G) -> (B, G, 3) by explicit per-sample indexing."""
    return torch.stack([xyz[b, idx[b]] for b in range(xyz.shape[0])], dim=0)


def knn_indices(xyz: torch.Tensor, center: torch.Tensor, k: int) -> torch.Tensor:
    """Brute force: for each centre the k nearest cloud points, nearest first. (B, G, k)."""
    diff = center[:, :, None, :] - xyz[:, None, :, :]  # B G N 3, exact differences
    sq = diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1] + diff[..., 2] * diff[..., 2]
    order = torch.sort(sq, dim=-1, stable=True).indices
    return order[..., :k]


class Group(nn.Module):
    """FPS centres + kNN neighbourhoods relative to their centre (no parameters)."""

    def __init__(self, num_group: int, group_size: int):
        super().__init__()
        self.num_group = num_group
        self.group_size = group_size
        # False only in tests that show a cloud really exercises the published skip rule
        self.skip_near_origin = True

    def forward(self, xyz: torch.Tensor):
        idx_centre = furthest_point_sample(xyz, self.num_group, self.skip_near_origin)
        center = gather_centres(xyz, idx_centre)  # B G 3
        idx = knn_indices(xyz, center, self.group_size)  # B G M
        neighborhood = torch.stack(
            [xyz[b][idx[b].reshape(-1)].reshape(self.num_group, self.group_size, 3) for b in range(xyz.shape[0])],
            dim=0,
        )
        neighborhood = neighborhood - center[:, :, None, :]
        return neighborhood, center


# --------------------------------------------------------------------------- patch encoder


class Encoder(nn.Module):
    """Mini-PointNet over each group: one token of ``encoder_channel`` per group."""

    def __init__(self, encoder_channel: int):
        super().__init__()
        self.encoder_channel = encoder_channel
        self.first_conv = nn.Sequential(
            nn.Conv1d(3, 128, 1), nn.BatchNorm1d(128), nn.ReLU(), nn.Conv1d(128, 256, 1)
        )
        self.second_conv = nn.Sequential(
            nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(), nn.Conv1d(512, encoder_channel, 1)
        )

    def forward(self, point_groups: torch.Tensor) -> torch.Tensor:
        b, g, m, _ = point_groups.shape
        pts = point_groups.reshape(b * g, m, 3).permute(0, 2, 1)  # BG 3 M
        per_point = self.first_conv(pts)  # BG 256 M
        pooled = per_point.amax(dim=2, keepdim=True)  # BG 256 1
        both = torch.cat([pooled.expand(-1, -1, m), per_point], dim=1)  # global first
        out = self.second_conv(both).amax(dim=2)  # BG C
        return out.reshape(b, g, self.encoder_channel)


# --------------------------------------------------------------------------- transformer


class DropPath(nn.Module):
    """Stochastic depth per sample; identity in eval mode."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype) < keep
        return x * mask.to(x.dtype) / keep


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention, written one head at a time."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        dim = x.shape[-1]
        qkv = self.qkv(x)
        # output channel layout of qkv is (3, heads, head_dim)
        q_all, k_all, v_all = qkv[..., :dim], qkv[..., dim : 2 * dim], qkv[..., 2 * dim :]
        heads = []
        for h in range(self.num_heads):
            sl = slice(h * self.head_dim, (h + 1) * self.head_dim)
            q, k, v = q_all[..., sl], k_all[..., sl], v_all[..., sl]
            weights = torch.softmax(torch.einsum("btd,bsd->bts", q, k) * self.scale, dim=-1)
            weights = self.attn_drop(weights)
            heads.append(torch.einsum("bts,bsd->btd", weights, v))
        return self.proj_drop(self.proj(torch.cat(heads, dim=-1)))


class Block(nn.Module):
    """Pre-norm ViT block (registration order as published: norm1, drop_path, norm2, mlp, attn)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.attn = Attention(dim, num_heads=num_heads)

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class TransformerEncoder(nn.Module):
    def __init__(self, embed_dim: int, depth: int, num_heads: int, drop_path_rate: Iterable[float] | float = 0.0):
        super().__init__()
        rates = list(drop_path_rate) if not isinstance(drop_path_rate, (int, float)) else [float(drop_path_rate)] * depth
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, drop_path=rates[i]) for i in range(depth)])

    def forward(self, x, pos):
        for block in self.blocks:
            x = block(x + pos)  # positional embedding before EVERY block
        return x


class TransformerDecoder(nn.Module):
    """Pre-training decoder (layout only: blocks, norm, head=Identity)."""

    def __init__(self, embed_dim: int, depth: int, num_heads: int, drop_path_rate: Iterable[float] | float = 0.0):
        super().__init__()
        rates = list(drop_path_rate) if not isinstance(drop_path_rate, (int, float)) else [float(drop_path_rate)] * depth
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, drop_path=rates[i]) for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Identity()

    def forward(self, x, pos, return_token_num: int):
        for block in self.blocks:
            x = block(x + pos)
        return self.head(self.norm(x[:, -return_token_num:]))


def _linear_drop_path(rate: float, depth: int) -> list[float]:
    if depth == 1:
        return [0.0]
    return [rate * i / (depth - 1) for i in range(depth)]


def _pos_embed(trans_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, trans_dim))


class PointTransformer(nn.Module):
    """The published Point-MAE fine-tune classifier (same attribute / state-dict names)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.trans_dim = config.trans_dim
        self.depth = config.depth
        self.drop_path_rate = config.drop_path_rate
        self.cls_dim = config.cls_dim
        self.num_heads = config.num_heads
        self.group_size = config.group_size
        self.num_group = config.num_group
        self.encoder_dims = config.encoder_dims

        self.group_divider = Group(self.num_group, self.group_size)
        self.encoder = Encoder(self.encoder_dims)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.trans_dim))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, self.trans_dim))
        self.pos_embed = _pos_embed(self.trans_dim)
        self.blocks = TransformerEncoder(
            self.trans_dim, self.depth, self.num_heads, _linear_drop_path(self.drop_path_rate, self.depth)
        )
        self.norm = nn.LayerNorm(self.trans_dim)
        self.cls_head_finetune = nn.Sequential(
            nn.Linear(self.trans_dim * 2, 256),
            nn.BatchNorm1d(256),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(256, 256),
            nn.BatchNorm1d(256),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(256, self.cls_dim),
        )

    def features(self, pts: torch.Tensor) -> torch.Tensor:
        """The 2C classification feature concat(cls, max over patch tokens)."""
        neighborhood, center = self.group_divider(pts)
        tokens = self.encoder(neighborhood)  # B G C
        b = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(b, -1, -1), self.pos_embed(center)], dim=1)
        x = self.norm(self.blocks(x, pos))
        return torch.cat([x[:, 0], x[:, 1:].max(dim=1).values], dim=-1)

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        return self.cls_head_finetune(self.features(pts))


class MaskTransformer(nn.Module):
    """Pre-training encoder layout (no cls token / cls pos, no head)."""

    def __init__(self, config):
        super().__init__()
        self.trans_dim = config.trans_dim
        self.encoder = Encoder(config.encoder_dims)
        self.pos_embed = _pos_embed(config.trans_dim)
        self.blocks = TransformerEncoder(
            config.trans_dim, config.depth, config.num_heads, _linear_drop_path(config.drop_path_rate, config.depth)
        )
        self.norm = nn.LayerNorm(config.trans_dim)


class PointMAEPretrain(nn.Module):
    """Published ``Point_MAE`` pre-training model, parameter layout only."""

    def __init__(self, config, decoder_depth: int = 2, decoder_num_heads: int | None = None):
        super().__init__()
        self.MAE_encoder = MaskTransformer(config)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.trans_dim))
        self.decoder_pos_embed = _pos_embed(config.trans_dim)
        self.MAE_decoder = TransformerDecoder(
            config.trans_dim,
            decoder_depth,
            decoder_num_heads or config.num_heads,
            _linear_drop_path(config.drop_path_rate, decoder_depth),
        )
        self.group_divider = Group(config.num_group, config.group_size)
        self.increase_dim = nn.Sequential(nn.Conv1d(config.trans_dim, 3 * config.group_size, 1))


# --------------------------------------------------------------------------- random weights


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter and BatchNorm running statistic a non-trivial random value.

    Linear/Conv weights are drawn with std 1/sqrt(fan_in) so activations stay O(1) through
    the network; biases, norm affine parameters, tokens and BN running statistics are all
    moved away from their identity defaults so that every one of them affects the logits.
    """
    g = torch.Generator().manual_seed(seed)

    def normal(shape, std=1.0, mean=0.0):
        return torch.randn(shape, generator=g) * std + mean

    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            fan_in = module.weight[0].numel()
            module.weight.copy_(normal(module.weight.shape, 1.0 / math.sqrt(fan_in)))
            if module.bias is not None:
                module.bias.copy_(normal(module.bias.shape, 0.1))
        elif isinstance(module, nn.LayerNorm):
            module.weight.copy_(normal(module.weight.shape, 0.2, 1.0))
            module.bias.copy_(normal(module.bias.shape, 0.1))
        elif isinstance(module, nn.BatchNorm1d):
            module.weight.copy_(normal(module.weight.shape, 0.2, 1.0))
            module.bias.copy_(normal(module.bias.shape, 0.1))
            module.running_mean.copy_(normal(module.running_mean.shape, 0.3))
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) * 1.5 + 0.5)
            module.num_batches_tracked.fill_(int(torch.randint(1, 10_000, (1,), generator=g)))
    for name, param in model.named_parameters():
        if "." not in name:  # top-level tokens: cls_token, cls_pos, mask_token
            param.copy_(normal(param.shape, 0.5))
    return model


# --------------------------------------------------------------------------- checkpoint layouts


def _fake_optimizer_state(model: nn.Module) -> dict:
    """A plain AdamW-like ``optimizer.state_dict()`` (tensors, numbers, lists, tuples only)."""
    params = list(model.parameters())
    state = {}
    for i, p in enumerate(params[:3]):
        state[i] = {"step": torch.tensor(12.0), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
    return {
        "state": state,
        "param_groups": [
            {
                "lr": 5e-4,
                "betas": (0.9, 0.999),
                "eps": 1e-8,
                "weight_decay": 0.05,
                "amsgrad": False,
                "initial_lr": 5e-4,
                "params": list(range(len(params))),
            }
        ],
    }


def published_finetune_checkpoint(model: PointTransformer, prefix: str = "module.") -> dict:
    """Dict as written by Point-MAE ``builder.save_checkpoint`` for a fine-tuned model."""
    state = {prefix + k: v.detach().clone() for k, v in model.state_dict().items()}
    return {
        "base_model": state,
        "optimizer": _fake_optimizer_state(model),
        "epoch": 12,
        "metrics": {"acc": 91.2},
        "best_metrics": {"acc": 91.2},
    }


def save_published_finetune_checkpoint(model: PointTransformer, path: str | os.PathLike, prefix: str = "module.") -> str:
    torch.save(published_finetune_checkpoint(model, prefix=prefix), path)
    return str(path)


def published_pretrain_checkpoint(model: PointMAEPretrain, prefix: str = "module.") -> dict:
    """Dict of a Point-MAE pre-training checkpoint: ``{'base_model': ..., 'epoch': 300}``."""
    return {"base_model": {prefix + k: v.detach().clone() for k, v in model.state_dict().items()}, "epoch": 300}


def save_published_pretrain_checkpoint(model: PointMAEPretrain, path: str | os.PathLike, prefix: str = "module.") -> str:
    torch.save(published_pretrain_checkpoint(model, prefix=prefix), path)
    return str(path)


def published_style_load(model: nn.Module, path: str | os.PathLike):
    """What the published ``load_model_from_ckpt`` does: drop every ``module.``, strip a
    leading ``MAE_encoder.`` / ``base_model.``, non-strict load.  Returns torch's
    ``_IncompatibleKeys`` (missing_keys, unexpected_keys)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = {k.replace("module.", ""): v for k, v in ckpt["base_model"].items()}
    renamed = {}
    for k, v in state.items():
        if k.startswith("MAE_encoder"):
            k = k[len("MAE_encoder.") :]
        elif k.startswith("base_model"):
            k = k[len("base_model.") :]
        renamed[k] = v
    return model.load_state_dict(renamed, strict=False)
