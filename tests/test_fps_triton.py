"""The one-launch Triton FPS kernel gives the PyTorch loop's indices.

On the CPU the kernel runs under Triton's interpreter (TRITON_INTERPRET=1, set
before triton is imported, hence a subprocess); on a CUDA machine it also runs
compiled on the GPU.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pointpeft_ray.models import fps_triton, ops

triton = pytest.importorskip("triton", reason="triton is installed by scripts/setup.sh (test extras)")

CASES = """
import json, torch
from pointpeft_ray.models import ops
from pointpeft_ray.models.ops import farthest_point_sample

def clouds(seed, batch, count):
    gen = torch.Generator().manual_seed(seed)
    pts = torch.rand(batch, count, 3, generator=gen) * 2 - 1
    pts[0, 5:60] *= 0.01                       # inside the published skip radius
    pts[-1, count // 4:count // 2] = pts[-1, count // 4].clone()  # duplicates: ties
    return pts

out = {}
cases = {
    "published": (clouds(0, 3, 1024), 64, "first", 1e-3),
    "odd_count": (clouds(1, 2, 1000), 32, "first", 1e-3),
    "no_threshold": (clouds(2, 2, 300), 300, "first", 0.0),
    "random_start": (clouds(3, 3, 512), 16, "random", 1e-3),
    "all_identical": (torch.ones(2, 40, 3), 8, "first", 1e-3),
    "all_near_origin": (torch.full((1, 50, 3), 1e-3), 10, "first", 1e-3),
    "double_input": (clouds(4, 2, 256).double(), 24, "first", 1e-3),
    "adapter_level": (clouds(5, 4, 64), 16, "first", 1e-3),
}
for name, (pts, m, start, thr) in cases.items():
    got = {}
    for backend in ("torch", "triton"):
        ops.set_fps_backend(backend)
        gen = torch.Generator().manual_seed(7)
        got[backend] = farthest_point_sample(pts, m, start=start, min_norm_sq=thr, generator=gen).tolist()
    out[name] = got

# A whole Point-PEFT forward (both grouping levels) with each backend.
from pointpeft_ray.models import MemoryBank, PointMAEBackbone, get_peft_model
from pointpeft_ray.models.presets import get_preset
preset = get_preset("tiny")
torch.manual_seed(0)
model = get_peft_model(PointMAEBackbone(preset.backbone), preset.peft_config(bank_query="frozen_pass"), 5).eval()
dim = preset.backbone.trans_dim
model.attach_memory_bank(MemoryBank(torch.randn(30, dim), torch.randn(30, dim)))
pts = clouds(6, 2, preset.num_points)
logits = {}
for backend in ("torch", "triton"):
    ops.set_fps_backend(backend)
    with torch.no_grad():
        logits[backend] = model(pts).tolist()
out["model_logits"] = logits
print(json.dumps(out))
"""


def test_kernel_matches_the_pytorch_loop_under_the_interpreter(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1", "POINTPEFT_FPS": "auto"}
    run = subprocess.run([sys.executable, "-c", CASES], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    logits = results.pop("model_logits")
    assert len(results) == 8
    for name, got in results.items():
        assert got["triton"] == got["torch"], name
    np.testing.assert_array_equal(np.array(logits["triton"]), np.array(logits["torch"]))


def test_threshold_is_the_published_double_comparison_in_float32():
    threshold = fps_triton.float32_at_most(1e-3)
    assert threshold <= 1e-3
    assert float(np.nextafter(np.float32(threshold), np.float32(np.inf))) > 1e-3
    assert fps_triton.float32_at_most(0.5) == 0.5


def test_backend_choice_and_clear_errors():
    cpu_cloud = torch.rand(2, 50, 3)
    try:
        ops.set_fps_backend("auto")
        expected = "triton" if fps_triton.INTERPRETED else "torch"
        assert ops.fps_backend_for(cpu_cloud) == expected
        assert ops.fps_backend_for(torch.rand(2, 50, 8)) == "torch"  # memory-bank features: any width
        ops.set_fps_backend("torch")
        assert ops.fps_backend_for(cpu_cloud) == "torch"
        if not fps_triton.INTERPRETED:
            ops.set_fps_backend("triton")
            with pytest.raises(RuntimeError, match="needs triton and xyz clouds on a CUDA device"):
                ops.farthest_point_sample(cpu_cloud, 4)
        with pytest.raises(ValueError, match="auto, torch, triton"):
            ops.set_fps_backend("fast")
    finally:
        ops.set_fps_backend("auto")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiled kernel needs a CUDA device")
def test_compiled_kernel_matches_the_pytorch_loop_on_cuda():
    gen = torch.Generator().manual_seed(0)
    pts = (torch.rand(16, 2048, 3, generator=gen) * 2 - 1).cuda()
    pts[0, 5:60] *= 0.01
    pts[1, 100:300] = pts[1, 100].clone()
    try:
        ops.set_fps_backend("torch")
        expected = ops.farthest_point_sample(pts, 64)
        ops.set_fps_backend("triton")
        got = ops.farthest_point_sample(pts, 64)
    finally:
        ops.set_fps_backend("auto")
    assert torch.equal(got, expected)
