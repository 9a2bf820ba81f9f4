"""`pointpeft-ray bench model`: train-step time and peak memory, full fine-tune vs PEFT.

Each variant runs in its own fresh process so its peak memory is its own: on
CPU the peak resident set size grown during training (activations, gradients,
optimizer state), on CUDA the allocator's peak.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..engine.acceleration import compile_model
from ..models import FullFinetuneClassifier, MemoryBank, PointMAEBackbone, get_peft_model, ops
from ..models.peft.geometry import token_geometry
from ..models.presets import get_preset
from ..output import format_table
from .common import machine_info, save_figures

VARIANTS = ("full", "peft", "peft_frozen_pass")
logger = logging.getLogger(__name__)
DESCRIPTIONS = {
    "full": "full fine-tune",
    "peft": "Point-PEFT, cached bank query",
    "peft_frozen_pass": "Point-PEFT, frozen-pass bank query (published)",
}


@dataclass
class BenchSettings:
    preset: str = "point_mae"
    batch: int = 32
    num_points: int | None = None
    steps: int = 3
    warmup: int = 1
    bank_rows: int = 11416  # PB_T50_RS training-set size
    num_classes: int = 15
    device: str = "cpu"
    bf16: bool = False
    compile: bool = False  # torch.compile each variant's forward (engine/acceleration.py)
    fps: str = "auto"  # FPS backend: auto, torch, triton (models/ops.py)
    seed: int = 0
    profile_dir: str | None = None  # write a torch.profiler table per variant here


def run_bench(settings: BenchSettings, variants=VARIANTS, json_path: str | None = None) -> dict:
    ctx = mp.get_context("spawn")
    results = []
    for variant in variants:
        logger.info(f"[bench model] {variant}: {DESCRIPTIONS[variant]} ...")
        with ctx.Pool(1) as pool:
            results.append(pool.apply(_measure_variant, (asdict(settings), variant)))
    summary = _summarise(results)
    payload = {"benchmark": "model", "settings": asdict(settings), "machine": machine_info(settings.device),
               "variants": results, "summary": summary}
    print(render(payload))
    return save_figures(payload, json_path)


def render(payload: dict) -> str:
    rows = [
        (r["variant"], r["trainable_params"], r["step_seconds"], r["samples_per_second"],
         r["peak_memory_mb"], f"{100 * r['grouping_share']:.1f}%" if r["grouping_share"] is not None else "-")
        for r in payload["variants"]
    ]
    table = format_table(["variant", "trainable", "step s", "samples/s", "peak MB", "grouping"], rows)
    s = payload["summary"]
    goals = [
        f"PEFT step / full step       = {s['step_ratio']:.2f}  (goal <= 1.0)",
        f"PEFT peak mem / full        = {s['memory_ratio']:.2f}  (goal <= 0.7)",
        f"grouping share of PEFT step = {100 * s['grouping_share']:.1f}%  (goal <= 10%)",
    ] if s else ["(ratios need both the full and peft variants)"]
    cfg = payload["settings"]
    first = payload["variants"][0]
    head = (f"model bench: preset={cfg['preset']} batch={cfg['batch']} points={first['num_points']} "
            f"device={cfg['device']} bf16={cfg['bf16']} fps={first['fps_backend']} compiled={first['compiled']}")
    return "\n".join([head, table, *goals])


def _summarise(results: list[dict]) -> dict:
    by = {r["variant"]: r for r in results}
    full, peft = by.get("full"), by.get("peft")
    if not (full and peft):
        return {}
    return {
        "step_ratio": peft["step_seconds"] / full["step_seconds"],
        "memory_ratio": peft["peak_memory_mb"] / full["peak_memory_mb"],
        "grouping_share": peft["grouping_share"],
    }


def _measure_variant(settings_dict: dict, variant: str) -> dict:
    settings = BenchSettings(**settings_dict)
    torch.manual_seed(settings.seed)
    device = torch.device(settings.device)
    ops.set_fps_backend(settings.fps)
    preset = get_preset(settings.preset)
    num_points = settings.num_points or preset.num_points
    model = _build_model(preset, variant, settings).to(device).train()
    compile_model(model, settings.compile)
    points = torch.rand(settings.batch, num_points, 3, device=device) * 2 - 1
    labels = torch.randint(settings.num_classes, (settings.batch,), device=device)
    index = torch.randperm(settings.bank_rows)[: settings.batch].to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.05)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.bf16):
            logits = model(points, sample_index=index) if variant != "full" else model(points)
            loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()

    baseline_mb = _current_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base_cuda = torch.cuda.memory_allocated(device)
    for _ in range(settings.warmup):
        step()
    times = _timed(step, device, settings.steps)
    if device.type == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated(device) - base_cuda) / 2**20
    else:
        peak_mb = _peak_rss_mb() - baseline_mb
    step_s = statistics.median_high(times)
    if settings.profile_dir:
        _write_profile(step, settings.profile_dir, variant, device)
    grouping_s = _grouping_seconds(model, points, device) if variant != "full" else None
    trainable = sum(p.numel() for p in params)
    return {
        "variant": variant,
        "description": DESCRIPTIONS[variant],
        "fps_backend": ops.fps_backend_for(points),
        "compiled": settings.compile and not model.forward.fell_back,
        "compile_notes": [model.forward.fell_back] if settings.compile and model.forward.fell_back else [],
        "num_points": num_points,
        "trainable_params": trainable,
        "total_params": sum(p.numel() for p in model.parameters()),
        "step_seconds": step_s,
        "step_times": times,
        "samples_per_second": settings.batch / step_s,
        "peak_memory_mb": peak_mb,
        "grouping_seconds": grouping_s,
        "grouping_share": (grouping_s / step_s) if grouping_s is not None else None,
    }


def _build_model(preset, variant: str, settings: BenchSettings):
    if variant == "full":
        return FullFinetuneClassifier(preset.backbone, settings.num_classes)
    query = "cached" if variant == "peft" else "frozen_pass"
    model = get_peft_model(PointMAEBackbone(preset.backbone), preset.peft_config(bank_query=query),
                           settings.num_classes)
    dim = preset.backbone.trans_dim
    # A bank of the real size; its contents do not change the cost of a step.
    feats = torch.randn(settings.bank_rows, dim)
    model.attach_memory_bank(MemoryBank(feats, torch.randn(settings.bank_rows, dim)))
    return model


def _grouping_seconds(model, points, device, repeats: int = 3) -> float:
    """First-level FPS + kNN and the adapter's second-level grouping, as in a step."""
    def grouping() -> None:
        _, centres = model.backbone.group(points)
        token_geometry(centres, model.peft_config)

    return statistics.median_high(_timed(grouping, device, repeats))


def _timed(function, device: torch.device, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls, the device's queued work included."""
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        function()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _write_profile(step, directory: str, variant: str, device: torch.device) -> None:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        step()
        _sync(device)
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    path = Path(directory) / f"profile-{variant}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(prof.key_averages().table(sort_by=sort_by, row_limit=40))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_rss_mb() -> float:
    # ru_maxrss is the process's peak resident set size, in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mb() -> float:
    # Current (not peak) RSS as the baseline: transient peaks while building
    # the model then count against the variant, never in its favour.
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        return _peak_rss_mb()
