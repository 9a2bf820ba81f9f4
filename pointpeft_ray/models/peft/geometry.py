"""Geometry-aware Adapter (SPEC 2b).

The second-level grouping depends only on the token centres, so it is computed
once per forward (:func:`token_geometry`) and shared by every block. The
published code offset neighbour indices by G per sample while prompted layers
hold G + P tokens per sample; here the adapter only ever sees the patch tokens,
sliced out by position, so the right rows are always gathered.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..ops import farthest_point_sample, gather_points, knn_indices
from .config import PointPEFTConfig
from .layers import BottleneckAdapter


@dataclass
class TokenGeometry:
    """Second-level grouping of the G patch tokens (indices into the patch tokens)."""

    subcentre_idx: torch.Tensor  # (B, S)
    neighbour_idx: torch.Tensor  # (B, S, k)
    interp_idx: torch.Tensor  # (B, G, n): nearest sub-centres of each token (into S)
    interp_weight: torch.Tensor  # (B, G, n): normalised inverse distances


def token_geometry(centres: torch.Tensor, num_subcentres: int, neighbours: int, interp_neighbours: int) -> TokenGeometry:
    with torch.no_grad():
        centres = centres.float()
        sub_idx = farthest_point_sample(centres, num_subcentres)
        sub_xyz = gather_points(centres, sub_idx)
        neighbour_idx = knn_indices(sub_xyz, centres, neighbours)
        dist = torch.cdist(centres, sub_xyz, compute_mode="donot_use_mm_for_euclid_dist")
        near = dist.topk(interp_neighbours, dim=-1, largest=False)
        # PointNet++ feature propagation: weights 1 / (d + eps), normalised.
        inv = 1.0 / (near.values + 1e-8)
        weight = inv / inv.sum(dim=-1, keepdim=True)
    return TokenGeometry(sub_idx, neighbour_idx, near.indices, weight)


class NeighbourhoodAttention(nn.Module):
    """Tiny attention among the k tokens of each neighbourhood, shared by all blocks.

    LayerNorm and qkv act per token, so they run on the G tokens before the
    gather: k times less work and memory than on gathered neighbourhoods.
    """

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * heads * head_dim, bias=False)
        self.proj = nn.Linear(heads * head_dim, dim)

    def forward(self, tokens: torch.Tensor, neighbour_idx: torch.Tensor) -> torch.Tensor:
        """tokens (B, G, C), neighbour_idx (B, S, k) -> updated neighbourhoods (B, S, k, C)."""
        batch, subs, k = neighbour_idx.shape
        qkv = gather_points(self.qkv(self.norm(tokens)), neighbour_idx)
        q, key, value = qkv.reshape(batch * subs, k, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        # Plain batched matmuls: with head_dim 3 the fused SDPA kernels pad
        # every tiny problem and were the slowest op of a GPU step.
        scores = (q * self.head_dim**-0.5) @ key.transpose(-1, -2)
        out = scores.softmax(dim=-1) @ value
        out = out.transpose(1, 2).reshape(batch, subs, k, self.heads * self.head_dim)
        return gather_points(tokens, neighbour_idx) + self.proj(out)


class GeometryAwareAdapter(nn.Module):
    """Per-block part of the adapter: the MLP-parallel adapter, neighbourhood
    pooling + propagation, and the residual bottleneck over all tokens."""

    def __init__(self, dim: int, config: PointPEFTConfig):
        super().__init__()
        self.mlp_adapter = BottleneckAdapter(dim, config.adapter_dim, residual=False)
        self.pool_norm = nn.BatchNorm1d(dim)
        self.pool_act = nn.GELU()
        self.out_adapter = BottleneckAdapter(dim, config.adapter_dim, residual=True)
        self.mlp_adapter_scale = config.mlp_adapter_scale
        self.centre_scale = config.centre_scale
        self.propagate_scale = config.propagate_scale
        self.pooling = config.pooling

    def parallel_to_mlp(self, mlp_out: torch.Tensor) -> torch.Tensor:
        return mlp_out + self.mlp_adapter_scale * self.mlp_adapter(mlp_out)

    def aggregate(self, patches: torch.Tensor, geometry: TokenGeometry, attention: NeighbourhoodAttention) -> torch.Tensor:
        """patches (B, G, C) -> patches with the propagated neighbourhood feature added."""
        neighbourhoods = attention(patches, geometry.neighbour_idx)
        pooled = neighbourhoods.max(dim=2).values
        if self.pooling == "max_mean":
            pooled = pooled + neighbourhoods.mean(dim=2)
        pooled = self.pool_act(self.pool_norm(pooled.transpose(1, 2)).transpose(1, 2))
        pooled = pooled + self.centre_scale * gather_points(patches, geometry.subcentre_idx)
        neighbours = gather_points(pooled, geometry.interp_idx)  # (B, G, n, C)
        propagated = (neighbours * geometry.interp_weight.unsqueeze(-1).to(neighbours.dtype)).sum(dim=2)
        return patches + self.propagate_scale * propagated

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_adapter(x)
