"""Farthest point sampling as one Triton kernel launch per batch (docs/benchmarks.md, "GPU step").

The pure-PyTorch loop in :mod:`.ops` launches a handful of kernels per sampled
point (~320 for 64 centres), which bounds a GPU training step by launch
latency. Here one program per cloud keeps the cloud in registers and runs the
whole selection loop on the device. Same rules as :func:`.ops.farthest_point_sample`:
running distances start at 1e10, points with |p|^2 <= the threshold start at -1
(picked only when nothing else is left), ties go to the lowest index, and
floating-point fusion is off so the distances round as the PyTorch ones do.

Triton is optional: without it (or off CUDA, unless TRITON_INTERPRET=1 is set,
which the tests use to check this kernel on the CPU) :func:`usable` is False
and :mod:`.ops` keeps its PyTorch loop.
"""
from __future__ import annotations

import os

import numpy as np
import torch

try:  # a CUDA build of torch ships triton; the CPU build does not
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is absent
    triton = None

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
MAX_POINTS = 16384  # one program holds the cloud in registers; larger clouds use the PyTorch loop


def usable(points: torch.Tensor) -> bool:
    """Whether this kernel can sample `points` (B, N, D) here."""
    if triton is None or points.dim() != 3 or points.shape[-1] != 3 or points.shape[1] > MAX_POINTS:
        return False
    return points.is_cuda or (INTERPRETED and points.device.type == "cpu")


def float32_at_most(value: float) -> float:
    """The largest float32 <= value: `norm32 <= value` (a double) holds exactly when
    `norm32 <= float32_at_most(value)`, so the kernel compares in float32 as the
    published kernel's double comparison does."""
    candidate = np.float32(value)
    if float(candidate) > value:
        candidate = np.nextafter(candidate, np.float32(-np.inf))
    return float(candidate)


def farthest_point_sample(points: torch.Tensor, num_samples: int, start: torch.Tensor,
                          min_norm_sq: float) -> torch.Tensor:
    """Indices (B, num_samples) int64; `start` (B,) the first index of each cloud.
    Arguments are checked by the caller (:func:`.ops.farthest_point_sample`)."""
    batch, count, _ = points.shape
    pts = points.float().contiguous()
    chosen = torch.empty(batch, num_samples, dtype=torch.int32, device=pts.device)
    block = triton.next_power_of_2(count)
    # Skipped points start at -1 (below any distance); with no threshold none are skipped.
    threshold = float32_at_most(min_norm_sq) if min_norm_sq > 0 else -1.0
    _fps_kernel[(batch,)](
        pts, start.to(device=pts.device, dtype=torch.int32).contiguous(), chosen, count, num_samples,
        threshold, pts.stride(0), BLOCK=block, num_warps=min(16, max(4, block // 256)),
        **({} if INTERPRETED else {"enable_fp_fusion": False}),
    )
    return chosen.long()


if triton is not None:

    @triton.jit
    def _fps_kernel(points_ptr, start_ptr, chosen_ptr, count, num_samples, threshold, stride_cloud,
                    BLOCK: tl.constexpr):
        cloud = tl.program_id(0)
        offsets = tl.arange(0, BLOCK)
        present = offsets < count
        row = points_ptr + cloud * stride_cloud + offsets * 3
        x = tl.load(row, mask=present, other=0.0)
        y = tl.load(row + 1, mask=present, other=0.0)
        z = tl.load(row + 2, mask=present, other=0.0)
        nearest = tl.where(x * x + y * y + z * z <= threshold, -1.0, 1e10)
        nearest = tl.where(present, nearest, -3.0e38)  # padding lanes never win
        current = tl.load(start_ptr + cloud)
        tl.store(chosen_ptr + cloud * num_samples, current)
        for step in range(1, num_samples):
            picked = offsets == current
            dx = x - tl.sum(tl.where(picked, x, 0.0), axis=0)
            dy = y - tl.sum(tl.where(picked, y, 0.0), axis=0)
            dz = z - tl.sum(tl.where(picked, z, 0.0), axis=0)
            nearest = tl.minimum(nearest, dx * dx + dy * dy + dz * dz)
            current = tl.argmax(nearest, axis=0, tie_break_left=True)
            tl.store(chosen_ptr + cloud * num_samples + step, current)
