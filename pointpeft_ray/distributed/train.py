"""Fine-tuning on Ray Train: the same loop as in-process, run by TorchTrainer workers.

Before the workers start, the memory bank (PEFT with a bank) is built once (on the
driver for CPU runs, else in a Ray task with one worker's resources: a GPU, or the CPUs
that a launcher task holding none lacks) and handed to every worker
through the object store, so N workers never build it N times, a restarted worker
doesn't rebuild it, and workers on other nodes need no shared cache.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from ..configuration import check_name
from ..engine.config import TrainConfig
from ..engine.context import RayTrainContext
from ..engine.loop import prepare_run, train
from ..engine.summary import format_epoch
from ..errors import ConfigError
from ..file_names import TENSORBOARD_DIR
from ..folder_lock import exclusive_folder
from ..logs import configure
from ..results.storage import check_storage_path, is_uri
from .cluster import ensure_ray, train_logging_config
from .weights import share_checkpoints, shared_tensors

SCORE_METRIC = "checkpoint_score"  # see engine.context.RayTrainContext
logger = logging.getLogger(__name__)


class NamedStorage:
    """What a Ray run's and a search's settings share: `name`, a folder under `storage_path`
    (a local folder or a pyarrow.fs URI; default ./runs)."""

    KIND = "run"  # names the setting in errors ("run name")
    COUNTS: tuple = ()  # (field, its command-line flag): counts that must be at least 1

    def __post_init__(self):
        check_name(self.name, f"{self.KIND} name")
        check_storage_path(self.storage_path, "--storage")
        for field_name, flag in self.COUNTS:
            if getattr(self, field_name) < 1:
                raise ConfigError(f"{flag}: expected at least 1, got {getattr(self, field_name)}")

    def storage(self) -> str:
        return self.storage_path or str(Path("runs").resolve())

    def local_run_dir(self) -> Path | None:
        """The folder `name` when storage is on this machine (None for a URI such as s3://)."""
        storage = self.storage()
        if is_uri(storage) and not storage.startswith("file://"):
            return None
        return Path(storage.removeprefix("file://")) / self.name


@dataclass
class RayRunSettings(NamedStorage):
    workers: int = 1
    use_gpu: bool = False
    gpus_per_worker: float = 1.0  # with use_gpu: a fraction lets several small runs share a GPU
    cpus_per_worker: float | None = None  # None: the cluster's CPUs shared out, at most a node's
    name: str = "pointpeft-train"
    storage_path: str | None = None  # local folder or pyarrow.fs URI; default ./runs
    max_failures: int = 0

    COUNTS = (("workers", "--workers"),)

    def resolved(self) -> "RayRunSettings":
        """CPUs per worker filled in from the running cluster. Ray sets a worker's torch
        threads from its CPU count, so one worker on a 2-core machine must ask for 2."""
        if self.cpus_per_worker is not None:
            return self
        import ray

        cpus = int(ray.cluster_resources().get("CPU", 1))
        # A worker runs on one node: on a cluster of several, no more than the largest has.
        largest = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")), default=cpus)
        return replace(self, cpus_per_worker=float(max(1, min(cpus // self.workers, int(largest)))))

    def scaling_config(self):
        import ray.train

        resources = {"CPU": self.cpus_per_worker}
        if self.use_gpu:
            resources["GPU"] = self.gpus_per_worker
        return ray.train.ScalingConfig(num_workers=self.workers, use_gpu=self.use_gpu,
                                       resources_per_worker=resources)


# Loggers of Ray Train / Tune internals that write a line at INFO for every checkpoint.
CHATTY_LOGGERS = ("ray.train.v2._internal.execution.storage", "ray.train._internal.storage")


def worker_logging() -> None:
    """In a process Ray started for us: the command line's console (pointpeft_ray/logs.py).
    Ray Train logs every report with all its metrics at INFO (a screenful per epoch with
    per-class accuracies), and a line per checkpoint; our own epoch line says what matters:
    those down to warnings, in this process."""
    configure(ray_process=True)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:  # its logger is named after the file, so reach it through the module
        from ray.train.v2._internal.execution import context as train_context

        train_context.logger.setLevel(logging.WARNING)
    except (ImportError, AttributeError):  # an internal module: absent in other Ray versions
        pass


def _worker_loop(loop_config: dict) -> None:
    import ray

    worker_logging()
    config = TrainConfig.from_dict(loop_config["config"])
    bank_ref = loop_config.get("bank")
    bank = ray.get(bank_ref) if bank_ref is not None else None
    context = RayTrainContext(on_report=lambda metrics: logger.info(format_epoch(metrics)))
    train(config, context=context, bank=bank, pretrained=shared_tensors(loop_config.get("weights")))


def _prepare_in_task(config_dict: dict, weights=None, device: str = "cpu"):
    worker_logging()
    return prepare_run(TrainConfig.from_dict(config_dict), device=device, pretrained=shared_tensors(weights))


def prepare_memory_bank(config: TrainConfig, settings: RayRunSettings, weights=None):
    """An ObjectRef to the run's memory bank, or None when the run uses no bank.
    `weights`: model.checkpoint in the object store (distributed.weights), if it is there."""
    import ray

    if not config.uses_memory_bank():
        return None
    if not settings.use_gpu and ray.get_runtime_context().worker.mode == ray.SCRIPT_MODE:
        # CPU workers would compute it at the same speed: do it in the driver and save a process start.
        return ray.put(prepare_run(config, pretrained=shared_tensors(weights)))
    # On a GPU, or called from a task that holds no CPU of its own (the multi-task launcher
    # of a multi-worker run): a task with one worker's resources builds it.
    task = ray.remote(num_cpus=settings.cpus_per_worker, num_gpus=settings.gpus_per_worker if settings.use_gpu else 0,
                      max_retries=0)(_prepare_in_task)
    return ray.put(ray.get(task.remote(config.model_dump(), weights, "cuda" if settings.use_gpu else "cpu")))


def with_log_dir(config: TrainConfig, settings: RayRunSettings) -> TrainConfig:
    """TensorBoard files beside the Ray run (local storage), unless the config names a folder."""
    run_dir = settings.local_run_dir()
    if config.log_dir or run_dir is None:
        return config
    return config.replace(log_dir=str(run_dir / TENSORBOARD_DIR))


def fit(config: TrainConfig, settings: RayRunSettings, address: str | None = None, weights=None):
    """Run the fine-tune with `settings.workers` Ray Train workers; returns Ray's Result.
    Rerunning with the same name and storage resumes from the latest checkpoint.
    `weights`: model.checkpoint already in the object store (distributed.weights), else put there here.
    A run another process is writing is refused (folder_lock)."""
    with exclusive_folder(settings.local_run_dir(), f"run {settings.name!r}"):
        return _fit(config, settings, address, weights)


def _fit(config: TrainConfig, settings: RayRunSettings, address: str | None, weights):
    import ray.train

    ensure_ray(address)
    settings = settings.resolved()
    config = with_log_dir(config, settings)
    if weights is None:
        weights = share_checkpoints([config]).get(config.model.checkpoint)
    bank = prepare_memory_bank(config, settings, weights)
    loop_config = {"config": config.model_dump(), "bank": bank, "weights": weights}
    # The best-scoring checkpoint is kept, and Ray always keeps the latest.
    keep = ray.train.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=SCORE_METRIC,
                                      checkpoint_score_order="max")
    return launch(_worker_loop, loop_config, settings.scaling_config(), settings.name, settings.storage(),
                  max_failures=settings.max_failures, checkpoint_config=keep)


def launch(loop, loop_config: dict, scaling_config, name: str, storage: str, *, max_failures: int = 0,
           checkpoint_config=None, callbacks: tuple = ()):
    """Every Ray Train run (fine-tune, pre-training, a trial's workers) starts here: `loop`
    on TorchTrainer workers, with our logging and a Ctrl-C that stops at once. Rerunning
    a name in the same storage resumes from its latest checkpoint. Returns Ray's Result."""
    import ray.train

    trainer = _interruptible_trainer_class()(
        loop, train_loop_config=loop_config, scaling_config=scaling_config,
        run_config=ray.train.RunConfig(name=name, storage_path=storage, logging_config=train_logging_config(),
                                       failure_config=ray.train.FailureConfig(max_failures=max_failures),
                                       checkpoint_config=checkpoint_config, callbacks=list(callbacks)),
    )
    return trainer.fit()


def _interruptible_trainer_class():
    """TorchTrainer whose Ctrl-C stops the run at once and reaches the caller as
    KeyboardInterrupt (the CLI then prints how to resume). Ray's own handler asks the
    controller to abort gracefully: the workers go on for epochs whose checkpoints are
    never registered (a rerun trains them again), and the process exits without a word."""
    import signal

    import ray
    from ray.train.torch import TorchTrainer

    class InterruptibleTorchTrainer(TorchTrainer):
        def _register_sigint_handler(self, controller):
            def stop(signum, frame):
                # The workers are the controller's actors: they stop with it. The last
                # registered checkpoint is what a rerun resumes from.
                ray.kill(controller, no_restart=True)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                raise KeyboardInterrupt

            signal.signal(signal.SIGINT, stop)

        def fit(self):
            previous = signal.getsignal(signal.SIGINT)
            try:
                return super().fit()
            finally:
                if threading.current_thread() is threading.main_thread():
                    signal.signal(signal.SIGINT, previous)

    if not hasattr(TorchTrainer, "_register_sigint_handler"):  # another Ray version: its own handling
        return TorchTrainer
    return InterruptibleTorchTrainer


def best_checkpoint(result):
    """The checkpoint of the best validation epoch (holds the exported adapter / model)."""
    scored = [(metrics.get(SCORE_METRIC, -1.0), checkpoint) for checkpoint, metrics in result.best_checkpoints or []]
    scored = [item for item in scored if item[0] >= 0]
    return max(scored, key=lambda item: item[0])[1] if scored else None
