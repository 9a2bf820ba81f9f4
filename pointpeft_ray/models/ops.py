"""Point-cloud grouping ops in pure PyTorch (batched, CPU and GPU).

The published Point-MAE code uses compiled CUDA ops (pointnet2_ops FPS and
KNN_CUDA). These functions reproduce their results without compiled
extensions, so the same centres and neighbourhoods come out on any device.
"""
from __future__ import annotations

import os
from typing import Literal

import torch

from . import fps_triton

# The published FPS kernel never selects a point whose squared norm is at most
# this value (except the first, index 0). Kept as the default so centres match
# the published code; pass 0.0 to sample every point.
PUBLISHED_FPS_MIN_NORM_SQ = 1e-3

FPS_BACKENDS = ("auto", "torch", "triton")
_fps_backend = os.environ.get("POINTPEFT_FPS", "auto")


def set_fps_backend(name: str) -> None:
    """auto: the one-launch Triton kernel where it can run (CUDA with triton), else the
    PyTorch loop; torch / triton force one (triton fails where it cannot run).
    The environment variable POINTPEFT_FPS sets the starting value (Ray workers inherit it)."""
    global _fps_backend
    if name not in FPS_BACKENDS:
        raise ValueError(f"FPS backend must be one of {', '.join(FPS_BACKENDS)}, got {name!r}")
    _fps_backend = name


def fps_backend_for(points: torch.Tensor) -> str:
    """The backend that samples `points`: 'triton' or 'torch'."""
    if _fps_backend == "torch":
        return "torch"
    if fps_triton.usable(points):
        return "triton"
    if _fps_backend == "triton":
        raise RuntimeError(f"FPS backend 'triton' cannot sample {tuple(points.shape)} points on "
                           f"{points.device}: it needs triton and xyz clouds on a CUDA device")
    return "torch"


# Compiled models run it eagerly (engine/acceleration.py): a Python loop unrolled into
# the graph only slows compilation, and the Triton kernel is one launch already.
@torch.compiler.disable
def farthest_point_sample(
    points: torch.Tensor,
    num_samples: int,
    start: Literal["first", "random"] = "first",
    min_norm_sq: float = PUBLISHED_FPS_MIN_NORM_SQ,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Indices (B, num_samples) of farthest point sampling over points (B, N, D).

    start="first" begins at index 0 like the published CUDA op; "random" draws
    the first index per sample. Ties resolve to the lowest index. Both backends
    (see :func:`set_fps_backend`) give the same indices.
    """
    _check_cloud(points, "points")
    batch, count, _ = points.shape
    if num_samples > count:
        raise ValueError(
            f"farthest_point_sample: asked for {num_samples} samples from clouds of {count} points"
        )
    if num_samples < 1:
        raise ValueError(f"farthest_point_sample: num_samples must be >= 1, got {num_samples}")
    device = points.device
    if start == "first":
        current = torch.zeros(batch, dtype=torch.long, device=device)
    elif start == "random":
        current = torch.randint(count, (batch,), device="cpu", generator=generator).to(device)
    else:
        raise ValueError(f"farthest_point_sample: start must be 'first' or 'random', got {start!r}")
    if fps_backend_for(points) == "triton":
        return fps_triton.farthest_point_sample(points, num_samples, current, min_norm_sq)
    return _farthest_point_sample_loop(points.float(), num_samples, current, min_norm_sq)


def _farthest_point_sample_loop(pts: torch.Tensor, num_samples: int, current: torch.Tensor,
                                min_norm_sq: float) -> torch.Tensor:
    batch, count, _ = pts.shape
    device = pts.device
    # Running distances start at 1e10 as in the published kernel. Points it
    # skips start at -1: min(-1, d) stays -1, so they only win when nothing
    # else is selectable, with no extra work per step. The kernel compares a
    # float32 norm with the double 1e-3, so compare in double too.
    nearest = torch.full((batch, count), 1e10, device=device, dtype=pts.dtype)
    if min_norm_sq > 0:
        nearest.masked_fill_((pts * pts).sum(-1).double() <= min_norm_sq, -1.0)
    chosen = [current]
    # A handful of kernels per step and no host sync: on a GPU the loop is
    # bound by launches, not arithmetic.
    for _ in range(num_samples - 1):
        last = torch.gather(pts, 1, current.view(batch, 1, 1).expand(batch, 1, pts.shape[-1]))
        dist = (pts - last).square_().sum(-1)
        torch.minimum(nearest, dist, out=nearest)
        current = nearest.argmax(dim=1)
        chosen.append(current)
    return torch.stack(chosen, dim=1)


@torch.compiler.disable  # its CPU tie check reads a value on the host: a graph break
def knn_indices(query: torch.Tensor, reference: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, M, k) of the k nearest reference points (B, N, D) of each query (B, M, D).

    Same result as the published KNN_CUDA op: squared distances from exact
    per-coordinate differences, nearest first, ties to the lowest index.
    """
    _check_cloud(query, "query")
    _check_cloud(reference, "reference")
    count = reference.shape[1]
    if k > count:
        raise ValueError(f"knn_indices: asked for {k} neighbours among {count} points")
    if k < 1:
        raise ValueError(f"knn_indices: k must be >= 1, got {k}")
    sq = squared_distances(query, reference)
    if sq.is_cuda:
        # On a GPU the exact keyed top-k is cheap, and checking for ties would
        # force a host sync that stalls the kernel queue.
        return _lowest_index_topk(sq, k)
    top = sq.topk(min(k + 1, count), dim=-1, largest=False, sorted=True)
    idx, values = top.indices[..., :k], top.values[..., :k]
    if k < count:
        # topk breaks ties arbitrarily: only a tie across the k-th place changes
        # the set, and it is rare, so only those rows take the exact slow path.
        tied = top.values[..., k - 1] == top.values[..., k]
        if bool(tied.any()):
            exact = _lowest_index_topk(sq[tied], k)
            idx = idx.clone()
            idx[tied] = exact
            values = values.clone()
            values[tied] = sq[tied].gather(-1, exact)
    order = _distance_index_key(values, idx).argsort(dim=-1)
    return idx.gather(-1, order)


def squared_distances(query: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(B, M, N) squared distances summed coordinate by coordinate (no matmul expansion,
    whose cancellation error can reorder near neighbours)."""
    query, reference = query.float(), reference.float()
    total = None
    for dim in range(query.shape[-1]):
        diff = query[..., dim].unsqueeze(2) - reference[..., dim].unsqueeze(1)
        total = diff * diff if total is None else total.add_(diff * diff)
    return total


def _distance_index_key(values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    # Non-negative float32 bit patterns sort like the floats: (distance, index)
    # packed in one int64 orders by distance, then by index.
    return (values.contiguous().view(torch.int32).to(torch.int64) << 32) | idx


def _lowest_index_topk(sq: torch.Tensor, k: int) -> torch.Tensor:
    index = torch.arange(sq.shape[-1], device=sq.device).expand_as(sq)
    return _distance_index_key(sq, index).topk(k, dim=-1, largest=False, sorted=True).indices


def gather_points(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (B, N, C) gathered at index (B, ...) -> (B, ..., C), on device."""
    batch, count, channels = values.shape
    # One flat index_select: its backward (index_add) is much faster than
    # that of gather with an index expanded over channels.
    offsets = torch.arange(batch, device=index.device).mul_(count).view(batch, *([1] * (index.dim() - 1)))
    flat = (index + offsets).reshape(-1)
    return values.reshape(batch * count, channels).index_select(0, flat).reshape(*index.shape, channels)


def group_points(
    points: torch.Tensor,
    num_group: int,
    group_size: int,
    fps_start: Literal["first", "random"] = "first",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Point-MAE grouping: FPS centres, kNN neighbourhoods made relative to them.

    Returns (neighbourhoods (B, G, M, 3), centres (B, G, 3)).
    """
    _check_cloud(points, "points")
    if points.shape[-1] != 3:
        raise ValueError(f"group_points: expected xyz points (B, N, 3), got shape {tuple(points.shape)}")
    centre_idx = farthest_point_sample(points, num_group, start=fps_start, generator=generator)
    centres = gather_points(points, centre_idx)
    neighbour_idx = knn_indices(centres, points, group_size)
    neighbourhoods = gather_points(points, neighbour_idx) - centres.unsqueeze(2)
    return neighbourhoods, centres


def _check_cloud(points: torch.Tensor, name: str) -> None:
    if not isinstance(points, torch.Tensor) or points.dim() != 3:
        shape = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
        raise ValueError(f"{name}: expected a (batch, points, dims) tensor, got {shape}")
