"""Fine-tuning on Ray Train: the same loop as in-process, run by TorchTrainer workers."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..engine.config import TrainConfig


@dataclass
class RayRunSpec:
    workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    name: str = "pointpeft-train"
    storage_path: str | None = None  # local folder or pyarrow.fs URI; default ./runs
    max_failures: int = 0


def _worker_loop(loop_config: dict) -> None:
    from ..engine.context import RayTrainContext
    from ..engine.loop import train

    config = TrainConfig.from_dict(loop_config["config"])
    train(config, context=RayTrainContext(), echo=print)


def fit(config: TrainConfig, spec: RayRunSpec, address: str | None = None):
    """Run the fine-tune with `spec.workers` Ray Train workers; returns Ray's Result."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from .cluster import ensure_ray

    ensure_ray(address)
    storage = spec.storage_path or str(Path("runs").resolve())
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"config": config.model_dump()},
        scaling_config=ray.train.ScalingConfig(num_workers=spec.workers, use_gpu=spec.use_gpu,
                                               resources_per_worker={"CPU": spec.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=spec.name, storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    return trainer.fit()
