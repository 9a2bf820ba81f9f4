"""`pointpeft-ray bench train`: the cost of running the loop through Ray Train.

The same fine-tune (same config, seed and data) is run twice: the loop called
directly in this process, and through a Ray Train TorchTrainer with one worker that
gets every CPU of the machine (as the in-process run does). Both keep the same
checkpoints (every epoch's state for resuming, the best epoch's export), as a Tune
trial or a resumable in-process run does. Data and memory-bank caches are warmed
first, and Ray is started before the clock runs, so what is compared is what Ray
Train adds: worker start-up, process-group set-up, reporting and checkpoint upload.
"""
from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ..distributed.cluster import ensure_ray
from ..distributed.train import RayRunSettings, fit
from ..engine.config import TrainConfig
from ..engine.loop import prepare_run, train
from ..logs import quiet
from ..output import format_table
from .common import cpu_config, machine_info, save_figures

GOAL_RATIO = 1.10
logger = logging.getLogger(__name__)


def run_bench(epochs: int = 8, json_path: str | None = None, address: str | None = None, repeats: int = 2,
              preset: str = "small", samples_per_class: int = 16) -> dict:
    """`repeats` pairs of runs, in-process and Ray alternating (this machine's speed drifts by
    several percent from run to run); the ratio is of the mean wall times."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    with tempfile.TemporaryDirectory(prefix="pointpeft-bench-train-") as tmp:
        # the small backbone at 16 per class: about 16 s an epoch in-process
        config = cpu_config("synth/hardest", preset, epochs, samples_per_class, str(Path(tmp) / "cache"))
        with quiet():
            prepare_run(config)  # warm the data and bank caches
        start = time.perf_counter()
        ensure_ray(address)
        ray_start = time.perf_counter() - start
        pairs = []
        for repeat in range(repeats):
            pairs.append((_in_process_run(config, Path(tmp) / f"in-process-{repeat}"),
                          _ray_train_run(config, Path(tmp) / "ray", f"bench-{repeat}")))
            logger.info(f"[bench train] pair {repeat + 1}/{repeats}: in-process {pairs[-1][0]['wall_seconds']:.1f} s, "
                        f"Ray Train {pairs[-1][1]['wall_seconds']:.1f} s")
    payload = _payload(config, epochs, pairs, ray_start)
    _print(payload)
    return save_figures(payload, json_path)


def _in_process_run(config: TrainConfig, run_dir: Path) -> dict:
    start = time.perf_counter()
    with quiet():
        result = train(config.replace(run_dir=str(run_dir)))
    last = result.history[-1]
    return {"wall_seconds": time.perf_counter() - start, "loop_seconds": last["elapsed_seconds"],
            "setup_seconds": result.setup_seconds, "best_accuracy": result.best_accuracy,
            "samples_per_second": last["train_samples_per_second"]}


def _ray_train_run(config: TrainConfig, storage: Path, name: str) -> dict:
    settings = RayRunSettings(workers=1, cpus_per_worker=os.cpu_count() or 1, storage_path=str(storage), name=name)
    start = time.perf_counter()
    result = fit(config, settings)
    wall = time.perf_counter() - start
    if result.error is not None:
        raise RuntimeError(f"the Ray Train run failed: {result.error}")
    last = result.metrics
    # elapsed_seconds: the worker's loop up to its last report; the rest is start-up and teardown
    return {"wall_seconds": wall, "loop_seconds": float(last["elapsed_seconds"]),
            "setup_seconds": float(last["setup_seconds"]), "best_accuracy": float(last["best_accuracy"]),
            "samples_per_second": float(last["train_samples_per_second"])}


def _payload(config: TrainConfig, epochs: int, pairs: list[tuple[dict, dict]], ray_start: float) -> dict:
    def mean(side: int, key: str) -> float:
        return statistics.mean(pair[side][key] for pair in pairs)

    direct, ray_wall = mean(0, "wall_seconds"), mean(1, "wall_seconds")
    return {
        "benchmark": "train", "machine": machine_info("cpu"), "config": config.model_dump(), "epochs": epochs,
        "repeats": len(pairs), "in_process_seconds": direct, "ray_train_seconds": ray_wall,
        "ratio": ray_wall / direct, "goal_ratio": GOAL_RATIO, "ray_start_seconds": ray_start,
        "in_process_loop_seconds": mean(0, "loop_seconds"), "ray_train_loop_seconds": mean(1, "loop_seconds"),
        "ray_train_outside_loop_seconds": ray_wall - mean(1, "loop_seconds"),
        "in_process_best_accuracy": pairs[0][0]["best_accuracy"], "ray_train_best_accuracy": pairs[0][1]["best_accuracy"],
        # the last epoch's training speed: equal speeds mean the gap is a fixed cost
        "in_process_samples_per_second": mean(0, "samples_per_second"),
        "ray_train_samples_per_second": mean(1, "samples_per_second"),
        "pairs": [{"in_process": a, "ray_train": b} for a, b in pairs],
    }


def _print(payload: dict) -> None:
    config = payload["config"]
    print(f"train bench: PEFT, {config['model']['preset']} backbone, {config['data']['task']} "
          f"({config['data']['options']['samples_per_class']} per class), {payload['epochs']} epochs, torch threads "
          f"{torch.get_num_threads()}, mean of {payload['repeats']} alternating pair(s); "
          f"Ray started in {payload['ray_start_seconds']:.1f}s (not counted)")
    print(format_table(["run", "wall s", "loop s", "best acc", "samples/s (last epoch)"], [
        ("in-process loop", payload["in_process_seconds"], payload["in_process_loop_seconds"],
         payload["in_process_best_accuracy"], payload["in_process_samples_per_second"]),
        ("Ray Train, 1 worker", payload["ray_train_seconds"], payload["ray_train_loop_seconds"],
         payload["ray_train_best_accuracy"], payload["ray_train_samples_per_second"]),
    ]))
    print(f"ratio {payload['ratio']:.3f} (goal <= {GOAL_RATIO} for a run of >= 60 s); the Ray run spent "
          f"{payload['ray_train_outside_loop_seconds']:.1f} s outside the worker's loop (start-up, teardown)")

