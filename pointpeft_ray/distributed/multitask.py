"""Multi-task fine-tuning: N tasks at once across the cluster, each its own adapter and
head on the shared frozen backbone, each with its own resources.

A one-worker task is a Ray task running the training loop in its own process; a task
with several workers is a Ray Train run (TorchTrainer) launched from a Ray task. Every
run checkpoints under its own folder, so a rerun resumes it (a finished run returns
at once). The pre-trained weights are read once, on the driver, and reach each node
once through the object store (distributed.weights). One failing task is recorded
with its error and the others go on. `tasks.parquet` (one row per task) and
`epochs.parquet` (trial_id = the task's label) are rewritten atomically as tasks finish.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..atomic import atomic_write_text
from ..engine.config import TrainConfig
from ..engine.context import load_state, node_id
from ..engine.loop import train
from ..errors import PointPEFTError
from ..file_names import ADAPTER_DIR, BEST_DIR, EPOCHS_FILE, PROGRESS_FILE, RAY_STORAGE_DIR, RUN_STATE_FILE, TASKS_FILE
from ..folder_lock import exclusive_folder
from ..logs import quiet
from ..results.storage import download_folder, join, upload, write_table_atomic
from ..results.tables import epochs_table, tasks_table
from .cluster import ensure_ray
from .train import RayRunSettings, best_checkpoint, fit, worker_logging
from .weights import share_checkpoints, shared_tensors

logger = logging.getLogger(__name__)


@dataclass
class TaskRun:
    label: str  # unique within the job: names the folder and the table row
    config: TrainConfig
    cpus: float = 1.0  # per worker
    gpus: float = 0.0  # per worker
    workers: int = 1  # > 1: a Ray Train (DDP) run
    variant: Optional[str] = None  # what the run stands for in a comparison (best, published, full, ...)


HEARTBEAT_S = 30.0  # the longest the console stays silent while runs train


def run_tasks(runs: list[TaskRun], experiment_dir: str | Path, address: str | None = None,
              max_concurrent: Optional[int] = None, sync_uri: Optional[str] = None) -> list[dict]:
    """Fine-tune every run in parallel (at most `max_concurrent` at once, else as the
    cluster's resources allow); returns the task rows in the order they finished.
    `sync_uri`: a pyarrow.fs folder URI; each task uploads its run folder to
    SYNC_URI/LABEL when it ends (from whichever node ran it)."""
    with exclusive_folder(experiment_dir, "multi-task run"):
        return _run_tasks(runs, Path(experiment_dir), address, max_concurrent, sync_uri)


def _run_tasks(runs: list[TaskRun], experiment_dir: Path, address: str | None,
               max_concurrent: Optional[int], sync_uri: Optional[str]) -> list[dict]:
    import ray

    labels = [run.label for run in runs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"task labels must be unique, got {labels}")
    if max_concurrent is not None and max_concurrent < 1:
        raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
    ensure_ray(address)
    weights = share_checkpoints(run.config for run in runs)
    waiting, pending = list(runs), {}
    rows, epochs = [], []
    start = time.perf_counter()
    while waiting or pending:
        while waiting and (max_concurrent is None or len(pending) < max_concurrent):
            run = waiting.pop(0)
            pending[_launch(run, experiment_dir, weights.get(run.config.model.checkpoint), sync_uri)] = run
        done, _ = ray.wait(list(pending), num_returns=1, timeout=HEARTBEAT_S)
        if not done:  # still training: say so at least every HEARTBEAT_S
            running = ", ".join(_with_epoch(r.label, experiment_dir) for r in pending.values())
            logger.info(f"[tasks] {len(rows)}/{len(runs)} done, running: {running}"
                        f"{f'; {len(waiting)} waiting' if waiting else ''}; {time.perf_counter() - start:.0f} s elapsed")
            continue
        run = pending.pop(done[0])
        row, history = _collect(done[0], run)
        rows.append(row)
        epochs += [{**metrics, "trial_id": run.label} for metrics in history]
        logger.info(f"[task] {run.label}: {row['status']}" + (f", best accuracy {row['best_accuracy']:.2f}"
                    if row["status"] == "completed" else f": {row['error']}"))
        write_table_atomic(tasks_table(rows), str(experiment_dir / TASKS_FILE))
        write_table_atomic(epochs_table(epochs), str(experiment_dir / EPOCHS_FILE))
    return rows


def _write_progress(config: TrainConfig, metrics: dict) -> None:
    progress = {"epoch": metrics["epoch"], "epochs": config.optim.epochs, "best_accuracy": metrics.get("best_accuracy")}
    atomic_write_text(Path(config.run_dir) / PROGRESS_FILE, json.dumps(progress))


def _with_epoch(label: str, experiment_dir: Path) -> str:
    """`label (epoch e/E)` where the run's folder is readable from here (a run on another
    node, or one of several workers, has none here: the label alone)."""
    try:
        progress = json.loads((experiment_dir / label / PROGRESS_FILE).read_text())
        return f"{label} (epoch {progress['epoch']}/{progress['epochs']})"
    except (OSError, ValueError, KeyError):
        return label


def _launch(run: TaskRun, experiment_dir: Path, weights_ref, sync_uri: Optional[str]):
    import ray

    config = run.config.replace(run_dir=str(experiment_dir / run.label)).model_dump()
    upload_to = join(sync_uri, run.label) if sync_uri else None
    if run.workers == 1:
        task = ray.remote(num_cpus=run.cpus, num_gpus=run.gpus, max_retries=0)(_train_task)
        return task.remote(config, weights_ref, upload_to)
    # The launcher only waits on the TorchTrainer; its workers hold the resources. The ref
    # goes in a list: Ray resolves a bare ref argument, and the launcher hands the ref (not
    # its arrays) on to the workers.
    launcher = ray.remote(num_cpus=0, max_retries=0)(_train_distributed_task)
    ray_storage = join(sync_uri or experiment_dir, RAY_STORAGE_DIR)
    return launcher.remote(config, [weights_ref], run.workers, run.cpus, run.gpus, run.label, ray_storage, upload_to)


def _collect(ref, run: TaskRun) -> tuple[dict, list]:
    import ray

    base = {"task": run.label, "task_name": run.config.data.task, "mode": run.config.mode,
            "variant": run.variant, "config": json.dumps(run.config.model_dump(mode="json"), sort_keys=True)}
    try:
        outcome = ray.get(ref)
    except Exception as err:  # the task's own error, recorded; the other tasks go on
        cause = getattr(err, "cause", None) or err
        return {**base, "status": "failed", "error": f"{type(cause).__name__}: {cause}"}, []
    return {**base, "status": "completed", **outcome["row"]}, outcome["history"]


def _train_task(config_dict: dict, weights_ref=None, upload_to: Optional[str] = None) -> dict:
    """Runs on a worker: the loop in this process, checkpoints under config.run_dir
    (uploaded to `upload_to` at the end, when given)."""
    worker_logging()
    config = TrainConfig.from_dict(config_dict)
    start = time.perf_counter()
    if upload_to and not Path(config.run_dir).exists():  # it ran (or began) on another node: resume from there
        download_folder(upload_to, config.run_dir)
    with quiet():  # one task among several: the driver's lines say how it went
        result = train(config, pretrained=shared_tensors(weights_ref),
                       report=lambda metrics: _write_progress(config, metrics))
    return _outcome(config.run_dir, result.history, result.trainable_params, result.total_params, start, upload_to)


def _train_distributed_task(config_dict: dict, weights_refs: list, workers: int, cpus: float, gpus: float,
                            label: str, ray_storage: str, upload_to: Optional[str] = None) -> dict:
    """Runs on the cluster: a Ray Train run of `workers` DDP workers (distributed.train.fit),
    kept in RAY_STORAGE/LABEL; the best adapter is copied into config.run_dir/best."""
    config = TrainConfig.from_dict(config_dict)
    start = time.perf_counter()
    settings = RayRunSettings(workers=workers, use_gpu=gpus > 0, gpus_per_worker=gpus or 1.0, cpus_per_worker=cpus,
                              name=label, storage_path=ray_storage, max_failures=2)
    result = fit(config.replace(run_dir=None), settings, weights=weights_refs[0])
    if result.error is not None:
        raise PointPEFTError(f"{label}: {result.error}")
    with result.checkpoint.as_directory() as directory:
        state = load_state(Path(directory) / RUN_STATE_FILE)
    best = best_checkpoint(result)
    if best is not None:  # beside the one-worker runs' (storage may be a URI): RUN_DIR/best holds the export
        best.to_directory(str(Path(config.run_dir) / BEST_DIR))
    return _outcome(config.run_dir, list(state["history"]), state.get("trainable_params"), state.get("total_params"),
                    start, upload_to)


def _outcome(run_dir: str, history: list[dict], trainable: Optional[int], total: Optional[int], start: float,
             upload_to: Optional[str]) -> dict:
    """What a task returns: its row of tasks.parquet and its epochs. The run folder is
    uploaded to `upload_to` first, when given."""
    import ray

    if upload_to:
        upload(run_dir, upload_to)
    final = history[-1] if history else {}
    adapter = Path(run_dir) / BEST_DIR / ADAPTER_DIR
    row = {"best_accuracy": final.get("best_accuracy"), "best_epoch": final.get("best_epoch"),
           "final_accuracy": final.get("val_accuracy"), "final_mean_class_accuracy":
           final.get("val_mean_class_accuracy"), "final_loss": final.get("val_loss"),
           "epochs": len(history), "trainable_params": trainable or final.get("trainable_params"),
           "total_params": total, "adapter_path": str(adapter) if adapter.is_dir() else None,
           "node": node_id(), "node_ip": ray.util.get_node_ip_address(), "wall_seconds": time.perf_counter() - start}
    return {"row": row, "history": history}
