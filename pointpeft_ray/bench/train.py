"""`pointpeft-ray bench train`: the cost of running the loop through Ray Train.

The same fine-tune (same config, seed and data) is run twice: the loop called
directly in this process, and through a Ray Train TorchTrainer with one worker that
gets every CPU of the machine (as the in-process run does). Data and memory-bank
caches are warmed first, and Ray is started before the clock runs, so what is
compared is the run itself: worker start-up, DDP set-up, reporting and checkpoints.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from ..engine.config import TrainConfig
from .report import format_table, machine_info, write_json

GOAL_RATIO = 1.10


def default_config(epochs: int, cache_dir: str) -> TrainConfig:
    """PEFT on the small CPU backbone, synth/hardest at reduced size: about a minute in-process."""
    return TrainConfig.from_dict({
        "mode": "peft", "model": {"preset": "small"}, "seed": 0,
        "data": {"task": "synth/hardest", "cache_dir": cache_dir, "options": {"samples_per_class": 16}},
        "optim": {"epochs": epochs, "warmup_epochs": 1, "batch_size": 32},
    })


def run_bench(epochs: int = 6, json_path: str | None = None, address: str | None = None, echo=print) -> dict:
    from ..distributed.cluster import ensure_ray
    from ..distributed.train import RayRunSpec, fit
    from ..engine.loop import prepare_run, train

    with tempfile.TemporaryDirectory(prefix="pointpeft-bench-train-") as tmp:
        config = default_config(epochs, str(Path(tmp) / "cache"))
        prepare_run(config, echo=lambda *_: None)  # warm the data and bank caches
        start = time.perf_counter()
        ensure_ray(address)
        ray_start = time.perf_counter() - start

        start = time.perf_counter()
        direct = train(config, echo=lambda *_: None)
        direct_wall = time.perf_counter() - start

        cpus = os.cpu_count() or 1
        run_spec = RayRunSpec(workers=1, cpus_per_worker=cpus, storage_path=str(Path(tmp) / "ray"), name="bench")
        start = time.perf_counter()
        result = fit(config, run_spec)
        ray_wall = time.perf_counter() - start
    if result.error is not None:
        raise RuntimeError(f"the Ray Train run failed: {result.error}")
    ratio = ray_wall / direct_wall
    payload = {
        "benchmark": "train", "machine": machine_info("cpu"), "config": config.model_dump(),
        "epochs": epochs, "in_process_seconds": direct_wall, "ray_train_seconds": ray_wall,
        "ratio": ratio, "goal_ratio": GOAL_RATIO, "ray_start_seconds": ray_start,
        "in_process_best_accuracy": direct.best_accuracy,
        "ray_train_best_accuracy": float(result.metrics.get("best_accuracy", 0.0)),
        # the last epoch's training speed: equal speeds mean the gap is a fixed cost
        "in_process_samples_per_second": direct.history[-1]["train_samples_per_second"],
        "ray_train_samples_per_second": float(result.metrics.get("train_samples_per_second", 0.0)),
    }
    echo(f"train bench: PEFT, small backbone, synth/hardest ({config.data.options['samples_per_class']} per class), "
         f"{epochs} epochs, torch threads {torch.get_num_threads()}; Ray started in {ray_start:.1f}s (not counted)")
    echo(format_table(["run", "wall s", "best acc", "samples/s (last epoch)"], [
        ("in-process loop", direct_wall, direct.best_accuracy, payload["in_process_samples_per_second"]),
        ("Ray Train, 1 worker", ray_wall, payload["ray_train_best_accuracy"], payload["ray_train_samples_per_second"]),
    ]))
    echo(f"ratio {ratio:.3f} (goal <= {GOAL_RATIO} for a run of >= 60 s)")
    if json_path:
        write_json(json_path, payload)
        echo(f"[bench train] figures written to {json_path}")
    return payload
