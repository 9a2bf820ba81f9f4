"""`pointpeft-ray bench multitask`: two fine-tunes side by side vs one after the other.

Both ways run the same two tasks (synth/objbg and synth/hardest, PEFT) as Ray tasks
with 1 CPU each: in parallel (one `run_tasks` call) and sequentially (one call per
task). Data and bank caches are warmed and Ray started before the clock runs.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from ..distributed.cluster import ensure_ray
from ..distributed.multitask import TaskRun, run_tasks
from ..engine.loop import prepare_run
from ..logs import quiet
from ..output import format_table
from .common import cpu_config, machine_info, save_figures

GOAL_RATIO = 0.6
TASKS = ("synth/objbg", "synth/hardest")


def run_bench(preset: str = "small", epochs: int = 2, samples_per_class: int = 16, json_path: str | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="pointpeft-bench-multitask-") as tmp, quiet():
        configs = [cpu_config(task, preset, epochs, samples_per_class, str(Path(tmp) / "cache")) for task in TASKS]
        for config in configs:
            prepare_run(config)  # data + bank caches, not timed
        ensure_ray(None)
        runs = [TaskRun(config.data.task.replace("/", "_"), config, cpus=1) for config in configs]
        start = time.perf_counter()
        for run in runs:
            run_tasks([run], Path(tmp) / "sequential")
        sequential = time.perf_counter() - start
        start = time.perf_counter()
        rows = run_tasks(runs, Path(tmp) / "parallel")
        parallel = time.perf_counter() - start
    failed = [row for row in rows if row["status"] != "completed"]
    if failed:
        raise RuntimeError(f"bench multitask: a task failed: {failed[0]['error']}")
    ratio = parallel / sequential
    payload = {"benchmark": "multitask", "machine": machine_info("cpu"), "tasks": list(TASKS), "preset": preset,
               "epochs": epochs, "samples_per_class": samples_per_class, "sequential_seconds": sequential,
               "parallel_seconds": parallel, "ratio": ratio, "goal_ratio": GOAL_RATIO}
    print(f"multitask bench: {len(TASKS)} PEFT tasks ({', '.join(TASKS)}), preset {preset}, {epochs} epochs, "
          f"{samples_per_class}/class, 1 CPU per task")
    print(format_table(["way", "wall s"], [("one after the other", sequential), ("in parallel", parallel)]))
    print(f"ratio {ratio:.2f} (goal <= {GOAL_RATIO})")
    return save_figures(payload, json_path)
