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


# =========================================================================== Point-PEFT
#
# Plain re-implementation of the published Point-PEFT fine-tune model
# (``MAE/models/Point_Mask_Rev_FT_scan_cp.py``: ``PointTransformer_best``), its adapters
# (``MAE/models/adapter_super.py``), its cache-prompt query model (``cp_model``: the
# Point-MAE pre-training model of ``MAE/models/Point_MAE_cp.py`` called with
# ``eval=True``) and the published ``validate()`` call order
# (``MAE/tools/runner_cache_prompt.py``).  Reproduced *with its defects*:
#
# * the prompt coordinates ``prompt_cor`` (P x 3) are concatenated in front of the points
#   and that cloud is grouped again (FPS starting at ``prompt_cor[0]``, skip rule
#   included) to get ``center_prompt``; the second-level ``Group(G/2, M/2)`` is applied to
#   both ``center`` and ``center_prompt``;
# * in the prompted blocks the neighbourhood / centre rows are read from
#   ``cat(prompt, patches).reshape(B * (G + P), C)`` with flat indices whose per-sample
#   offset is ``b * G`` (not ``b * (G + P)``): sample b >= 1 reads rows of sample b - 1
#   (the "token-index offset" defect);
# * ``Attention1`` is 18 wide, scale ``18 ** -0.5``, heads = the model's ``num_heads``;
# * the radius mask and ``neighborhood / std`` are computed but never used: dropped here;
# * the bank is a plain (C, N) tensor attribute, not a parameter / buffer, and is not
#   normalised; only the query feature is.

_PEFT_AT_PUBLISHED_SIZE = dict(
    adapter_dim=16, num_tokens=10, prompt_depth=6, drop_rate_adapter=0.1, query_num_group=64, query_group_size=32
)
_ATTN1_WIDTH = 18
_PROPAGATE_COF = 0.3
_CENTER_COF = 0.3
_ADAPTER_COF = 0.7


def make_pointpeft_config(
    trans_dim: int = 384,
    depth: int = 12,
    num_heads: int = 6,
    num_group: int = 128,
    group_size: int = 32,
    cls_dim: int = 15,
    adapter_dim: int = 16,
    adapter_drop_path_rate: float = 0.1,
    query_num_group: int = 64,
    query_group_size: int = 32,
    **extra,
) -> SimpleNamespace:
    """``make_config`` plus the published ``adapter_config`` / ``if_half`` fields and the
    query-model grouping (``cache_prompt.yaml``: num_group 64, group_size 32).

    ``adapter_dim`` is also reachable as ``config.adapter_config.adapter_dim`` (published)."""
    config = make_config(
        trans_dim=trans_dim,
        depth=depth,
        num_heads=num_heads,
        num_group=num_group,
        group_size=group_size,
        cls_dim=cls_dim,
        adapter_dim=adapter_dim,
        query_num_group=query_num_group,
        query_group_size=query_group_size,
        **extra,
    )
    config.adapter_config = SimpleNamespace(adapter_dim=adapter_dim, adapter_drop_path_rate=adapter_drop_path_rate)
    if not hasattr(config, "if_half"):
        config.if_half = False
    return config


def _config_adapter_dim(config) -> int:
    adapter_config = getattr(config, "adapter_config", None)
    if adapter_config is not None and getattr(adapter_config, "adapter_dim", None) is not None:
        return int(adapter_config.adapter_dim)
    return int(getattr(config, "adapter_dim", _PEFT_AT_PUBLISHED_SIZE["adapter_dim"]))


def group_with_indices(xyz: torch.Tensor, num_group: int, group_size: int, skip_near_origin: bool = True):
    """The published Point-PEFT ``Group.forward``: FPS + kNN, returning
    ``(neighborhood (B,G,M,3), center (B,G,3), idx (B*G*M,), center_idx (B*G,))`` where the
    flat indices carry the per-sample offset ``b * N`` (N = number of points of ``xyz``)."""
    b, n, _ = xyz.shape
    centre_idx = furthest_point_sample(xyz, num_group, skip_near_origin)  # B G
    center = gather_centres(xyz, centre_idx)  # B G 3
    knn = knn_indices(xyz, center, group_size)  # B G M
    rows = []
    for s in range(b):
        rows.append(xyz[s][knn[s].reshape(-1)].reshape(num_group, group_size, 3))
    neighborhood = torch.stack(rows, dim=0) - center[:, :, None, :]
    offsets = torch.arange(b, dtype=torch.long).view(-1, 1) * n
    idx = (knn + offsets.view(-1, 1, 1)).reshape(-1)
    center_idx = (centre_idx + offsets).reshape(-1)
    return neighborhood, center, idx, center_idx


def published_square_distance(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """``modules.square_distance``: the |a|^2 + |b|^2 - 2ab expansion, in that order."""
    b, n, _ = src.shape
    _, m, _ = dst.shape
    dist = -2 * torch.matmul(src, dst.permute(0, 2, 1))
    dist = dist + torch.sum(src**2, -1).view(b, n, 1)
    dist = dist + torch.sum(dst**2, -1).view(b, 1, m)
    return dist


def published_index_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``modules.index_points``: points (B, N, C), idx (B, ...) -> (B, ..., C)."""
    return torch.stack([points[s][idx[s]] for s in range(points.shape[0])], dim=0)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _AdapterBase(nn.Module):
    """ln1 -> QuickGELU -> dropout -> ln2 (``adapter_super.py``); Xavier-uniform weights,
    N(0, 1e-6) biases."""

    residual = True

    def __init__(self, embed_dims: int, reduction_dims: int, drop_rate_adapter: float = 0.0):
        super().__init__()
        if reduction_dims <= 0:
            raise ValueError("the published adapter with reduction_dims <= 0 has no layers and cannot run")
        self.embed_dims = embed_dims
        self.super_reductuion_dim = reduction_dims
        self.dropout = nn.Dropout(p=drop_rate_adapter)
        self.identity = False
        self.ln1 = nn.Linear(embed_dims, reduction_dims)
        self.activate = QuickGELU()
        self.ln2 = nn.Linear(reduction_dims, embed_dims)
        for layer in (self.ln1, self.ln2):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.normal_(layer.bias, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.ln2(self.dropout(self.activate(self.ln1(x))))
        return x + out if self.residual else out


class AdapterSuper(_AdapterBase):
    """Published ``AdapterSuper``: returns ``x + adapter(x)``."""

    residual = True


class AdapterSuper_f(_AdapterBase):  # noqa: N801 - published name
    """Published ``AdapterSuper_f``: returns ``adapter(x)`` (no residual)."""

    residual = False


class Attention1(nn.Module):
    """The 18-wide local attention shared by all blocks: qkv Linear(C, 54, bias=False),
    ``num_heads`` heads of ``18 // num_heads``, scale ``18 ** -0.5``, proj Linear(18, C)."""

    def __init__(self, dim: int, num_heads: int = 6, qkv_bias: bool = False):
        super().__init__()
        if _ATTN1_WIDTH % num_heads:
            raise ValueError(f"published Attention1 reshapes 54 channels into (3, {num_heads}, 18 // {num_heads}): impossible")
        self.num_heads = num_heads
        self.head_dim = _ATTN1_WIDTH // num_heads
        self.scale = _ATTN1_WIDTH ** -0.5  # NOT head_dim ** -0.5
        self.qkv = nn.Linear(dim, _ATTN1_WIDTH * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(_ATTN1_WIDTH, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)  # channel layout (3, heads, head_dim)
        w = _ATTN1_WIDTH
        q_all, k_all, v_all = qkv[..., :w], qkv[..., w : 2 * w], qkv[..., 2 * w :]
        heads = []
        for h in range(self.num_heads):
            sl = slice(h * self.head_dim, (h + 1) * self.head_dim)
            q, k, v = q_all[..., sl], k_all[..., sl], v_all[..., sl]
            weights = torch.softmax(torch.einsum("btd,bsd->bts", q, k) * self.scale, dim=-1)
            heads.append(torch.einsum("bts,bsd->btd", self.attn_drop(weights), v))
        return self.proj_drop(self.proj(torch.cat(heads, dim=-1)))


class PeftBlock(nn.Module):
    """Published Point-PEFT ``Block`` (registration order as published, so state-dict
    order is too: ad_gate, prompt_embeddings, norm1, cp_adapter, norm2, mlp, adapter,
    adapter1, attn, out_transform)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        adapter_dim: int,
        drop_rate_adapter: float,
        num_tokens: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        cp_adapter_dims: int | None = None,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        # published: embed_dims=384 literally (== trans_dim at the published size)
        self.cp_adapter = AdapterSuper(cp_adapter_dims or dim, 8, drop_rate_adapter)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adapter = AdapterSuper_f(dim, adapter_dim, drop_rate_adapter)
        self.adapter1 = AdapterSuper(dim, adapter_dim, drop_rate_adapter)
        self.attn = Attention(dim, num_heads=num_heads)
        self.ad_gate = nn.Parameter(torch.zeros(1))  # registered, never used (as published)
        self.out_transform = nn.Sequential(nn.BatchNorm1d(dim), nn.GELU())
        self.prompt_dropout = nn.Dropout(0.1)
        self.num_tokens = num_tokens
        self.prompt_embeddings = nn.Parameter(torch.zeros(num_tokens, dim))
        nn.init.trunc_normal_(self.prompt_embeddings, std=0.02)

    def pooling(self, knn_x_w: torch.Tensor) -> torch.Tensor:
        """(B, S, k, C) -> max over k -> BatchNorm1d(C) + GELU -> (B, S, C)."""
        lc_x = knn_x_w.max(dim=2).values
        return self.out_transform(lc_x.permute(0, 2, 1)).permute(0, 2, 1)

    @staticmethod
    def propagate(xyz1, xyz2, points1, points2, de_neighbors: int) -> torch.Tensor:
        b, n, _ = xyz1.shape
        dists = published_square_distance(xyz1, xyz2)
        dists, idx = dists.sort(dim=-1)
        dists, idx = dists[:, :, :de_neighbors], idx[:, :, :de_neighbors]
        dist_recip = 1.0 / (dists + 1e-8)
        norm = torch.sum(dist_recip, dim=2, keepdim=True)
        weight = (dist_recip / norm).view(b, n, de_neighbors, 1)
        interpolated = torch.sum(published_index_points(points2, idx) * weight, dim=2)
        return points1 + _PROPAGATE_COF * interpolated

    def _local(self, tokens, center1, center2, idx, center_idx, group_size, attn1, norm3):
        """Neighbourhood attention + pooling + propagation on ``tokens`` (B, T, C); rows are
        read from ``tokens.reshape(B*T, C)`` with the given flat indices (whatever their
        per-sample offset is) and propagated onto the trailing ``center1.shape[1]`` tokens."""
        b, t, c = tokens.shape
        s = center2.shape[1]
        flat = tokens.reshape(b * t, c)
        x_neighborhoods = flat[idx, :].reshape(b * s, group_size, c)
        x_centers = flat[center_idx, :].reshape(b, s, c)
        x_neighborhoods = self.drop_path(attn1(norm3(x_neighborhoods))) + x_neighborhoods
        vis_x = self.pooling(x_neighborhoods.reshape(b, s, group_size, c)) + _CENTER_COF * x_centers
        patches = tokens[:, t - center1.shape[1] :]
        return self.propagate(center1, center2, patches, vis_x, de_neighbors=s)

    def forward(self, x, center1, center2, idx, center_idx, group_size, attn1, norm3, cache_prompt=None, prompted=True):
        p = self.num_tokens
        if prompted:
            prompt = self.prompt_dropout(self.prompt_embeddings.repeat(center2.shape[0], 1, 1))
            if cache_prompt is not None:
                prompt = prompt + self.cp_adapter(cache_prompt)
            x = torch.cat((x[:, :1], prompt, x[:, 1:]), dim=1)
            x = self.attn(self.norm1(x)) + x
            x_fn = self.drop_path(self.mlp(self.norm2(x)))
            x = _ADAPTER_COF * self.adapter(x_fn) + x_fn + x
            prompt = x[:, 1 : p + 1]
            cls_x = x[:, 0]
            patches = x[:, p + 1 :]
            prompt_x = torch.cat((prompt, patches), dim=1)  # B, G+P, C; indices offset b*G (defect)
            patches = self._local(prompt_x, center1, center2, idx, center_idx, group_size, attn1, norm3)
            x = self.adapter1(torch.cat((cls_x.unsqueeze(1), prompt, patches), dim=1))
            return torch.cat((x[:, :1], x[:, p + 1 :]), dim=1)
        x = x + self.attn(self.norm1(x))
        x_fn = self.drop_path(self.mlp(self.norm2(x)))
        x = _ADAPTER_COF * self.adapter(x_fn) + x_fn + x
        cls_x = x[:, 0]
        patches = self._local(x[:, 1:], center1, center2, idx, center_idx, group_size, attn1, norm3)
        return self.adapter1(torch.cat((cls_x.unsqueeze(1), patches), dim=1))


class PeftTransformerEncoder(nn.Module):
    """Published Point-PEFT ``TransformerEncoder``: blocks, then the shared attn1 / norm3."""

    def __init__(self, embed_dim, depth, num_heads, drop_path_rate, adapter_dim, drop_rate_adapter, num_tokens, prompt_depth):
        super().__init__()
        self.prompt_depth = prompt_depth
        self.pos_drop = nn.Dropout(p=0.0)
        rates = list(drop_path_rate)
        self.blocks = nn.ModuleList(
            [
                PeftBlock(embed_dim, num_heads, adapter_dim, drop_rate_adapter, num_tokens, drop_path=rates[i])
                for i in range(depth)
            ]
        )
        self.attn1 = Attention1(embed_dim, num_heads=num_heads)
        self.norm3 = nn.LayerNorm(embed_dim)

    def forward(self, x, pos, prompt_geometry, plain_geometry, group_size, cache_prompt=None):
        for layer_id, block in enumerate(self.blocks):
            prompted = layer_id < self.prompt_depth  # published: layer_id <= 5
            center1, center2, idx, center_idx = prompt_geometry if prompted else plain_geometry
            x = block(x + pos, center1, center2, idx, center_idx, group_size, self.attn1, self.norm3,
                      cache_prompt=cache_prompt, prompted=prompted)
        return x


class PointTransformerBest(nn.Module):
    """The published Point-PEFT fine-tune classifier ``PointTransformer_best``.

    ``bank`` is the (C, N) cache-prompt memory bank (published: ``torch.load`` of
    ``ckpts/train_f_pos_shape_scan.pt``), kept as the plain attribute
    ``train_images_features_agg`` (not a parameter or buffer: not in ``state_dict``).
    """

    def __init__(self, config, bank: torch.Tensor | None, num_tokens: int = 10, prompt_depth: int = 6,
                 drop_rate_adapter: float = 0.1):
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
        self.adapter_dim = _config_adapter_dim(config)
        self.drop_rate_adapter = drop_rate_adapter
        self.num_tokens = num_tokens
        self.prompt_depth = prompt_depth
        if num_tokens < 2:
            raise ValueError("the published cache prompt needs P >= 2 tokens (K = P - 2)")

        self.group_divider = Group(self.num_group, self.group_size)
        self.encoder = Encoder(self.encoder_dims)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.trans_dim))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, self.trans_dim))
        self.pos_embed = _pos_embed(self.trans_dim)
        self.masking_radius = 1.28  # the radius mask it drives is never used by attention
        self.prompt_cor = nn.Parameter(torch.zeros(num_tokens, 3))
        nn.init.trunc_normal_(self.prompt_cor, std=0.02)
        self.blocks = PeftTransformerEncoder(
            self.trans_dim,
            self.depth,
            self.num_heads,
            _linear_drop_path(self.drop_path_rate, self.depth),
            self.adapter_dim,
            drop_rate_adapter,
            num_tokens,
            prompt_depth,
        )
        self.norm = nn.LayerNorm(self.trans_dim)
        self.train_images_features_agg = bank
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
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.cls_pos, std=0.02)

    @property
    def bank(self) -> torch.Tensor | None:
        return self.train_images_features_agg

    @bank.setter
    def bank(self, value: torch.Tensor | None) -> None:
        self.train_images_features_agg = value

    # ----------------------------------------------------------------- pieces, for tests

    def geometry(self, pts: torch.Tensor) -> dict:
        """Every grouping the published forward computes (first and second level)."""
        neighborhood, center, _, _ = group_with_indices(pts, self.num_group, self.group_size)
        prompt_cor = self.prompt_cor.repeat(pts.shape[0], 1, 1)
        prompt_pts = torch.cat((prompt_cor, pts), dim=1)
        # the published code runs the full Group here; only the centres are ever used
        _, center_prompt, _, _ = group_with_indices(prompt_pts, self.num_group, self.group_size)
        sub_groups, sub_size = int(self.num_group / 2), int(self.group_size / 2)
        _, center_new, idx, center_idx = group_with_indices(center, sub_groups, sub_size)
        _, center_new_prompt, idx_prompt, center_idx_prompt = group_with_indices(center_prompt, sub_groups, sub_size)
        return {
            "neighborhood": neighborhood,
            "center": center,
            "prompt_pts": prompt_pts,
            "center_prompt": center_prompt,
            "center_new": center_new,
            "idx": idx,
            "center_idx": center_idx,
            "center_new_prompt": center_new_prompt,
            "idx_prompt": idx_prompt,
            "center_idx_prompt": center_idx_prompt,
            "sub_group_size": sub_size,
        }

    def cache_prompt(self, cp_feat: torch.Tensor | None) -> torch.Tensor | None:
        """(B, C) query feature -> (B, P, C) cache prompt, or None."""
        if cp_feat is None:
            return None
        bank = self.train_images_features_agg
        if bank is None:
            raise ValueError("cp_feat given but the model has no bank (published: the bank file is always loaded)")
        k = self.num_tokens - 2
        cp_feat_norm = cp_feat / cp_feat.norm(dim=-1, keepdim=True)
        scores = cp_feat_norm @ bank  # B, N  (bank not normalised)
        top_scores, idx_k = torch.topk(scores, k)
        weights = torch.softmax(top_scores, dim=1).unsqueeze(1)  # B, 1, K
        rows = torch.stack([bank[:, idx_k[s]].T for s in range(idx_k.shape[0])], dim=0)  # B, K, C
        rows = rows.to(torch.float32)  # published: torch.tensor(list) -> float32
        feat_f = torch.matmul(weights, rows)  # B, 1, C
        return torch.cat((cp_feat.unsqueeze(1), feat_f, rows), dim=1)

    def features(self, pts: torch.Tensor, cp_feat: torch.Tensor | None = None) -> torch.Tensor:
        geo = self.geometry(pts)
        tokens = self.encoder(geo["neighborhood"])
        b = tokens.shape[0]
        x = torch.cat((self.cls_token.expand(b, -1, -1), tokens), dim=1)
        pos = torch.cat((self.cls_pos.expand(b, -1, -1), self.pos_embed(geo["center"])), dim=1)
        prompt_geometry = (geo["center_prompt"], geo["center_new_prompt"], geo["idx_prompt"], geo["center_idx_prompt"])
        plain_geometry = (geo["center"], geo["center_new"], geo["idx"], geo["center_idx"])
        x = self.blocks(x, pos, prompt_geometry, plain_geometry, geo["sub_group_size"], self.cache_prompt(cp_feat))
        x = self.norm(x)
        return torch.cat([x[:, 0], x[:, 1:].max(dim=1).values], dim=-1)

    def forward(self, pts: torch.Tensor, cp_feat: torch.Tensor | None = None) -> torch.Tensor:
        return self.cls_head_finetune(self.features(pts, cp_feat))


class PublishedCacheQuery(PointMAEPretrain):
    """The published ``cp_model``: a full Point-MAE pre-training model (same state-dict
    layout as a Point-MAE pre-train checkpoint: ``MAE_encoder.*``, ``mask_token``,
    ``decoder_pos_embed.*``, ``MAE_decoder.*``, ``increase_dim.*``; loaded strictly by
    ``builder.load_model``) whose ``forward(pts, eval=True)`` groups the points with its own
    Group (64 x 32 published), runs the encoder over all tokens (no masking) and returns
    the max over the normalised tokens, (B, C).  The decoder is never used.

    ``num_group`` / ``group_size`` default to ``config.query_num_group`` /
    ``config.query_group_size`` when present, else to the published 64 / 32; every other
    size (trans_dim, depth, num_heads, encoder_dims, drop_path_rate) comes from ``config``.
    """

    def __init__(self, config, num_group: int | None = None, group_size: int | None = None, decoder_depth: int = 4,
                 decoder_num_heads: int | None = None):
        if num_group is None:
            num_group = getattr(config, "query_num_group", _PEFT_AT_PUBLISHED_SIZE["query_num_group"])
        if group_size is None:
            group_size = getattr(config, "query_group_size", _PEFT_AT_PUBLISHED_SIZE["query_group_size"])
        query_config = SimpleNamespace(**vars(config))
        query_config.num_group = int(num_group)
        query_config.group_size = int(group_size)
        super().__init__(query_config, decoder_depth=decoder_depth, decoder_num_heads=decoder_num_heads)
        self.config = query_config
        self.num_group = int(num_group)
        self.group_size = int(group_size)

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        neighborhood, center = self.group_divider(pts)
        enc = self.MAE_encoder
        tokens = enc.encoder(neighborhood)  # B G C, nothing masked
        x = enc.norm(enc.blocks(tokens, enc.pos_embed(center)))
        return x.max(dim=1).values

    @classmethod
    def from_pretrain_checkpoint(cls, path: str | os.PathLike, num_group: int = 64, num_heads: int = 6,
                                 drop_path_rate: float = 0.1, decoder_num_heads: int | None = None) -> "PublishedCacheQuery":
        """Build from a Point-MAE pre-train checkpoint file (``{'base_model'|'model': ...}``),
        as ``builder.load_model``: every ``module.`` removed, strict load.  Sizes are read
        from the tensors; ``num_group`` and ``num_heads`` are not in a checkpoint
        (published: 64 and 6)."""
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        raw = ckpt.get("model") if ckpt.get("model") is not None else ckpt.get("base_model")
        if raw is None:
            raise RuntimeError("mismatch of ckpt weight")
        state = {k.replace("module.", ""): v for k, v in raw.items()}
        trans_dim = int(state["MAE_encoder.norm.weight"].shape[0])
        encoder_dims = int(state["MAE_encoder.encoder.second_conv.3.weight"].shape[0])

        def count(prefix: str) -> int:
            ids = {int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)}
            return max(ids) + 1 if ids else 0

        depth = count("MAE_encoder.blocks.blocks.")
        decoder_depth = count("MAE_decoder.blocks.")
        group_size = int(state["increase_dim.0.weight"].shape[0]) // 3
        config = make_config(trans_dim=trans_dim, depth=depth, num_heads=num_heads, num_group=num_group,
                             group_size=group_size, encoder_dims=encoder_dims, drop_path_rate=drop_path_rate)
        model = cls(config, num_group=num_group, group_size=group_size, decoder_depth=decoder_depth,
                    decoder_num_heads=decoder_num_heads)
        model.load_state_dict(state, strict=True)
        return model.eval()


def load_published_cache_query(path: str | os.PathLike, **kwargs) -> PublishedCacheQuery:
    """Function form of :meth:`PublishedCacheQuery.from_pretrain_checkpoint`."""
    return PublishedCacheQuery.from_pretrain_checkpoint(path, **kwargs)


@torch.no_grad()
def build_published_bank(query: PublishedCacheQuery, clouds: torch.Tensor, batch: int = 8) -> torch.Tensor:
    """The (C, N) bank: column n = ``query(clouds[n])`` (raw, not normalised), computed in
    eval mode ``batch`` clouds at a time.  (The published repository ships the bank file
    but not the script that built it; this is the layout its model consumes.)"""
    was_training = query.training
    query.eval()
    feats = [query(clouds[i : i + batch]) for i in range(0, clouds.shape[0], batch)]
    query.train(was_training)
    return torch.cat(feats, dim=0).T.contiguous()


def save_published_bank(bank: torch.Tensor, path: str | os.PathLike) -> str:
    torch.save(bank.detach().clone().contiguous(), path)
    return str(path)


@torch.no_grad()
def published_logits(model: PointTransformerBest, query: PublishedCacheQuery | None, pts: torch.Tensor,
                     npoints: int | None = None) -> torch.Tensor:
    """Published ``validate()``: both models in eval mode, ``cp_feat = cp_model(points,
    eval=True)`` (its first return value), ``logits = base_model(points, cp_feat=cp_feat)``.
    With ``npoints`` the clouds are first resampled by ``misc.fps(points, npoints)`` as
    ``validate()`` does (default: used as given).  ``query=None``: no cache prompt."""
    model.eval()
    if npoints is not None:
        pts = gather_centres(pts, furthest_point_sample(pts, npoints))
    cp_feat = None
    if query is not None:
        query.eval()
        cp_feat = query(pts)
    return model(pts, cp_feat)


@torch.no_grad()
def randomize_pointpeft_(model: nn.Module, seed: int = 0, prompt_cor_std: float = 0.3) -> nn.Module:
    """``randomize_`` (every Linear / Conv / LayerNorm / BatchNorm incl. running stats, the
    top-level tokens) plus the block-level parameters it does not reach (prompt_embeddings,
    ad_gate), and ``prompt_cor`` ~ N(0, prompt_cor_std) so that it spreads like a trained
    one.  Works for ``PointTransformerBest`` and ``PublishedCacheQuery``."""
    randomize_(model, seed=seed)
    g = torch.Generator().manual_seed(seed + 7919)
    for name, param in model.named_parameters():
        if name.endswith("prompt_embeddings"):
            param.copy_(torch.randn(param.shape, generator=g) * 0.5)
        elif name.endswith("ad_gate"):
            param.copy_(torch.randn(param.shape, generator=g) * 0.5)
        elif name == "prompt_cor":
            param.copy_(torch.randn(param.shape, generator=g) * prompt_cor_std)
    return model


#: substrings the published runner uses to pick the trainable parameters (names with ``module.``)
_PEFT_TRAINABLE = (
    "attn_free_linear", "cp", "adapter1", "norm3", "attn1.", "out_transform", ".adapter.", "proj.bias", "fc2.bias",
    "fc1.bias", "norm2.bias", "norm1.bias", "prompt_cor", "cache_gate", "cls_pos", "cls_token", "cls_head_", "norm.",
    ".gate", "ad_gate", "prompt_embedding",
)


def _peft_optimizer_state(model: nn.Module, prefix: str = "module.") -> dict:
    """A plain AdamW ``state_dict()`` as ``build_opti_sche`` builds it for the published
    runner: only the trainable parameters, in two groups (no-decay first, then decay)."""
    no_decay, decay = [], []
    for name, param in model.named_parameters():
        if not any(s in prefix + name for s in _PEFT_TRAINABLE):
            continue
        if param.dim() == 1 or name.endswith(".bias") or "token" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    ordered = no_decay + decay
    g = torch.Generator().manual_seed(0)
    state = {
        i: {
            "step": torch.tensor(4321.0),
            "exp_avg": torch.randn(p.shape, generator=g) * 1e-3,
            "exp_avg_sq": torch.rand(p.shape, generator=g) * 1e-6,
        }
        for i, p in enumerate(ordered)
    }
    common = {
        "lr": 1.3e-5,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "amsgrad": False,
        "foreach": None,
        "maximize": False,
        "capturable": False,
        "differentiable": False,
        "fused": None,
        "initial_lr": 5e-4,
    }
    return {
        "state": state,
        "param_groups": [
            dict(common, weight_decay=0.0, params=list(range(len(no_decay)))),
            dict(common, weight_decay=0.05, params=list(range(len(no_decay), len(ordered)))),
        ],
    }


def published_pointpeft_checkpoint(model: PointTransformerBest, prefix: str = "module.", epoch: int = 287,
                                   acc: float = 89.5142) -> dict:
    """Dict as ``builder.save_checkpoint`` writes ``ckpt-best.pth`` from the Point-PEFT
    runner (``nn.DataParallel``: ``module.`` prefixes; metrics are ``Acc_Metric.state_dict()``
    whose ``acc`` is a tensor)."""
    metric = torch.tensor(float(acc))
    return {
        "base_model": {prefix + k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizer": _peft_optimizer_state(model, prefix=prefix),
        "epoch": int(epoch),
        "metrics": {"acc": metric.clone()},
        "best_metrics": {"acc": metric.clone()},
    }


def save_published_pointpeft_checkpoint(model: PointTransformerBest, path: str | os.PathLike,
                                        prefix: str = "module.") -> str:
    torch.save(published_pointpeft_checkpoint(model, prefix=prefix), path)
    return str(path)


__all__ += [
    "make_pointpeft_config",
    "group_with_indices",
    "published_square_distance",
    "published_index_points",
    "QuickGELU",
    "AdapterSuper",
    "AdapterSuper_f",
    "Attention1",
    "PeftBlock",
    "PeftTransformerEncoder",
    "PointTransformerBest",
    "PublishedCacheQuery",
    "load_published_cache_query",
    "build_published_bank",
    "save_published_bank",
    "published_logits",
    "randomize_pointpeft_",
    "published_pointpeft_checkpoint",
    "save_published_pointpeft_checkpoint",
]
