"""What the benchmarks share: the machine one ran on (for its JSON), the small PEFT
fine-tune the CPU benchmarks time, and where their figures go. The table: pointpeft_ray.output."""
from __future__ import annotations

import os
import platform
from typing import Optional

import torch

from ..engine.config import TrainConfig
from ..output import write_json


def machine_info(device: str) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def cpu_config(task: str, preset: str, epochs: int, samples_per_class: int, cache_dir: Optional[str] = None,
               checkpoint: Optional[str] = None) -> TrainConfig:
    """PEFT on `task` (a synthetic one) at `samples_per_class` per class, batch 32, seed 0."""
    return TrainConfig.from_dict({
        "mode": "peft", "model": {"preset": preset, "checkpoint": checkpoint}, "seed": 0,
        "data": {"task": task, "cache_dir": cache_dir, "options": {"samples_per_class": samples_per_class}},
        "optim": {"epochs": epochs, "warmup_epochs": 1, "batch_size": 32},
    })


def save_figures(payload: dict, json_path: Optional[str]) -> dict:
    """`payload` written to `json_path` (when given, and said so); returns it."""
    if json_path:
        write_json(json_path, payload)
        print(f"[bench {payload['benchmark']}] figures written to {json_path}")
    return payload
