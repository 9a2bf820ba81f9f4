"""Geometry-aware Adapter (docs/method.md, "Geometry-aware Adapter").

The second-level grouping depends only on the token centres, so it is computed
once per forward (:func:`token_geometry`) and shared by every block. Its
neighbourhoods are stored as flat row indices into the (B * rows, C) token
rows of a block, so the same gather serves the fixed indexing (sample b's rows
start at b * rows) and the published one (they start at b * G while prompted
blocks hold G + P rows per sample).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..ops import farthest_point_sample, gather_points, knn_indices, squared_distances
from .config import PointPEFTConfig
from .layers import BottleneckAdapter


@dataclass
class TokenGeometry:
    """Second-level grouping of G token centres into S sub-centres of k neighbours."""

    neighbour_rows: torch.Tensor  # (B * S * k,) flat rows of each neighbourhood's tokens
    subcentre_rows: torch.Tensor  # (B * S,) flat rows of the sub-centres' own tokens
    interp_idx: torch.Tensor  # (B, G, n): sub-centres propagated to each token (into S)
    interp_weight: torch.Tensor  # (B, G, n): normalised inverse-distance weights
    rows_per_sample: int  # rows per sample of the token tensor the rows index
    neighbours: int  # k
    over_prompts: bool = False  # rows are [prompts, patches] (published prompt_cor), else the patches


def token_geometry(centres: torch.Tensor, config: PointPEFTConfig, rows_per_sample: int | None = None,
                   sample_stride: int | None = None, over_prompts: bool = False) -> TokenGeometry:
    """The grouping of `centres` (B, G, 3) for the adapters.

    rows_per_sample: rows per sample of the tensor gathered from (default G);
    sample_stride: where sample b's rows start, as a multiple of b (default
    rows_per_sample; the published prompted blocks use G).
    """
    batch, count, _ = centres.shape
    rows_per_sample = rows_per_sample or count
    stride = sample_stride or rows_per_sample
    subs = config.subcentres_for(count)
    with torch.no_grad():
        sub_idx = farthest_point_sample(centres.detach(), subs)
        sub_xyz = gather_points(centres.detach(), sub_idx)
        neighbour_idx = knn_indices(sub_xyz, centres.detach(), config.neighbours)
        offsets = torch.arange(batch, device=centres.device).mul_(stride)
        neighbour_rows = (neighbour_idx + offsets.view(batch, 1, 1)).reshape(-1)
        subcentre_rows = (sub_idx + offsets.view(batch, 1)).reshape(-1)
    # Weights keep their graph: learnable prompt coordinates move them.
    sub_xyz = gather_points(centres, sub_idx)
    squared = squared_distances(centres, sub_xyz)
    near = config.interp_neighbours or subs
    if near < subs:
        squared, interp_idx = squared.topk(near, dim=-1, largest=False)
    else:
        interp_idx = torch.arange(subs, device=centres.device).expand(batch, count, subs)
    if config.propagation == "inverse_square":
        distance = squared
    else:  # sqrt has an infinite slope at 0 (a token on its sub-centre): keep its gradient finite
        distance = torch.where(squared > 0, squared.clamp_min(1e-30).sqrt(), torch.zeros_like(squared))
    inverse = 1.0 / (distance + 1e-8)
    weight = inverse / inverse.sum(dim=-1, keepdim=True)
    return TokenGeometry(neighbour_rows, subcentre_rows, interp_idx, weight, rows_per_sample, config.neighbours,
                         over_prompts)


def gather_rows(tokens: torch.Tensor, rows: torch.Tensor, rows_per_sample: int) -> torch.Tensor:
    """tokens (B, R, C) -> the flat `rows` of (B * R, C)."""
    batch, count, channels = tokens.shape
    if count != rows_per_sample:
        raise ValueError(f"the geometry indexes {rows_per_sample} rows per sample, the tokens have {count}")
    return tokens.reshape(batch * count, channels).index_select(0, rows)


class NeighbourhoodAttention(nn.Module):
    """Tiny attention among the k tokens of each neighbourhood, shared by all blocks.

    LayerNorm and qkv act per token, so they run on the tokens before the
    gather: k times less work and memory than on gathered neighbourhoods.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, scale: str = "head_dim"):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        # The published code scales by (heads * head_dim)^-0.5, not head_dim^-0.5.
        self.scale = (heads * head_dim if scale == "total_dim" else head_dim) ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * heads * head_dim, bias=False)
        self.proj = nn.Linear(heads * head_dim, dim)

    def forward(self, tokens: torch.Tensor, geometry: TokenGeometry,
                drop: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """tokens (B, R, C) -> updated neighbourhoods (B * S, k, C); `drop` (drop-path)
        acts on the attention branch per neighbourhood."""
        k, channels = geometry.neighbours, tokens.shape[-1]
        rows = geometry.neighbour_rows
        qkv = gather_rows(self.qkv(self.norm(tokens)), rows, geometry.rows_per_sample)
        q, key, value = qkv.reshape(-1, k, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        # Plain batched matmuls: with head_dim 3 the fused SDPA kernels pad
        # every tiny problem and were the slowest op of a GPU step.
        scores = (q * self.scale) @ key.transpose(-1, -2)
        out = scores.softmax(dim=-1) @ value
        out = self.proj(out.transpose(1, 2).reshape(-1, k, self.heads * self.head_dim))
        if drop is not None:
            out = drop(out)
        return gather_rows(tokens, rows, geometry.rows_per_sample).reshape(-1, k, channels) + out


class GeometryAwareAdapter(nn.Module):
    """Per-block part of the adapter: the MLP-parallel adapter, neighbourhood
    pooling + propagation, and the residual bottleneck over all tokens."""

    def __init__(self, dim: int, config: PointPEFTConfig):
        super().__init__()
        adapter = dict(init=config.adapter_init, dropout=config.adapter_dropout)
        self.mlp_adapter = BottleneckAdapter(dim, config.adapter_dim, residual=False, **adapter)
        self.pool_norm = nn.BatchNorm1d(dim)
        self.pool_act = nn.GELU()
        self.out_adapter = BottleneckAdapter(dim, config.adapter_dim, residual=True, **adapter)
        self.mlp_adapter_scale = config.mlp_adapter_scale
        self.centre_scale = config.centre_scale
        self.propagate_scale = config.propagate_scale
        self.pooling = config.pooling

    def parallel_to_mlp(self, mlp_out: torch.Tensor) -> torch.Tensor:
        return mlp_out + self.mlp_adapter_scale * self.mlp_adapter(mlp_out)

    def aggregate(self, rows: torch.Tensor, patches: torch.Tensor, geometry: TokenGeometry,
                  attention: NeighbourhoodAttention, drop=None) -> torch.Tensor:
        """Neighbourhoods gathered from `rows` (B, R, C), pooled and propagated onto
        `patches` (B, G, C); returns the patches with that feature added."""
        batch = rows.shape[0]
        neighbourhoods = attention(rows, geometry, drop)
        pooled = neighbourhoods.max(dim=1).values
        if self.pooling == "max_mean":
            pooled = pooled + neighbourhoods.mean(dim=1)
        pooled = pooled.reshape(batch, -1, pooled.shape[-1])
        pooled = self.pool_act(self.pool_norm(pooled.transpose(1, 2)).transpose(1, 2))
        own = gather_rows(rows, geometry.subcentre_rows, geometry.rows_per_sample).reshape(pooled.shape)
        pooled = pooled + self.centre_scale * own
        neighbours = gather_points(pooled, geometry.interp_idx)  # (B, G, n, C)
        propagated = (neighbours * geometry.interp_weight.unsqueeze(-1).to(neighbours.dtype)).sum(dim=2)
        return patches + self.propagate_scale * propagated
