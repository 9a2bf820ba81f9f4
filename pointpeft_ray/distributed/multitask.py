"""Multi-task fine-tuning: N tasks at once across the cluster, each its own adapter and
head on the shared frozen backbone, each with its own resources.

Every task is a Ray task running the same training loop in-process, checkpointing under
its own folder (so a rerun resumes it). One failing task is recorded with its error and
the others go on. `tasks.parquet` (one row per task) and `epochs.parquet` (trial_id =
the task's label) are rewritten atomically as tasks finish.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..engine.config import TrainConfig

TASKS_FILE = "tasks.parquet"
EPOCHS_FILE = "epochs.parquet"


@dataclass
class TaskRun:
    label: str  # unique within the job: names the folder and the table row
    config: TrainConfig
    cpus: float = 1.0
    gpus: float = 0.0


def run_tasks(runs: list[TaskRun], experiment_dir: str | Path, address: str | None = None,
              echo=print) -> list[dict]:
    """Fine-tune every run in parallel (as the cluster's resources allow); returns the task rows."""
    import ray

    from .cluster import ensure_ray

    labels = [run.label for run in runs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"task labels must be unique, got {labels}")
    ensure_ray(address)
    experiment_dir = Path(experiment_dir)
    pending = {}
    for run in runs:
        task = ray.remote(num_cpus=run.cpus, num_gpus=run.gpus, max_retries=0)(_train_task)
        run_dir = str(experiment_dir / run.label)
        pending[task.remote(run.config.replace(run_dir=run_dir).model_dump())] = run
    rows, epochs = [], []
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        run = pending.pop(done[0])
        row, history = _collect(done[0], run)
        rows.append(row)
        epochs += [{**metrics, "trial_id": run.label} for metrics in history]
        echo(f"[task] {run.label}: {row['status']}"
             + (f", best accuracy {row['best_accuracy']:.2f}" if row["status"] == "completed" else f": {row['error']}"))
        _write_tables(rows, epochs, experiment_dir)
    return rows


def _collect(ref, run: TaskRun) -> tuple[dict, list]:
    import ray

    base = {"task": run.label, "task_name": run.config.data.task, "mode": run.config.mode,
            "config": json.dumps(run.config.model_dump(mode="json"), sort_keys=True)}
    try:
        outcome = ray.get(ref)
    except Exception as err:  # the task's own error, recorded; the other tasks go on
        cause = getattr(err, "cause", None) or err
        return {**base, "status": "failed", "error": f"{type(cause).__name__}: {cause}"}, []
    return {**base, "status": "completed", **outcome["row"]}, outcome["history"]


def _train_task(config_dict: dict) -> dict:
    """Runs on a worker: the loop in this process, checkpoints under config.run_dir."""
    import ray

    from ..engine.loop import ADAPTER_DIR, train

    config = TrainConfig.from_dict(config_dict)
    start = time.perf_counter()
    result = train(config, echo=lambda *_: None)
    final = result.final
    best = Path(config.run_dir) / "best"
    return {
        "row": {"best_accuracy": result.best_accuracy, "best_epoch": result.best_epoch,
                "final_accuracy": final.get("val_accuracy"), "final_mean_class_accuracy":
                final.get("val_mean_class_accuracy"), "final_loss": final.get("val_loss"),
                "epochs": len(result.history), "trainable_params": result.trainable_params,
                "total_params": result.total_params,
                "adapter_path": str(best / ADAPTER_DIR) if (best / ADAPTER_DIR).is_dir() else None,
                "node": ray.util.get_node_ip_address(), "wall_seconds": time.perf_counter() - start},
        "history": result.history,
    }


def _write_tables(rows: list[dict], epochs: list[dict], experiment_dir: Path) -> None:
    from ..results.storage import write_table_atomic
    from ..results.tables import epochs_table, tasks_table

    experiment_dir.mkdir(parents=True, exist_ok=True)
    write_table_atomic(tasks_table(rows), str(experiment_dir / TASKS_FILE))
    write_table_atomic(epochs_table(epochs), str(experiment_dir / EPOCHS_FILE))
