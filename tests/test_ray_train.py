"""Fine-tuning through Ray Train (TorchTrainer) on a real local Ray cluster."""
import pytest
import torch

from pointpeft_ray.distributed.train import RayRunSpec, fit
from pointpeft_ray.engine.config import TrainConfig
from tests.test_tasks import write_scanobjectnn


@pytest.fixture(scope="session")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_train_runs_checkpoints_and_resumes_by_name(local_ray, tmp_path):
    root = write_scanobjectnn(tmp_path / "scan", n=(48, 16), points=256)
    raw = {"mode": "peft", "model": {"preset": "tiny"},
           "data": {"task": "scanobjectnn/obj_bg", "root": str(root), "cache_dir": str(tmp_path / "cache")},
           "optim": {"epochs": 2, "warmup_epochs": 1, "batch_size": 8}}
    spec = RayRunSpec(workers=1, storage_path=str(tmp_path / "ray"), name="tiny-peft")
    result = fit(TrainConfig.from_dict(raw), spec)
    assert result.error is None and result.metrics["epoch"] == 2
    assert 0 <= result.metrics["val_accuracy"] <= 100 and len(result.metrics["val_per_class_accuracy"]) == 15
    with result.checkpoint.as_directory() as directory:
        state = torch.load(f"{directory}/run_state.pt", weights_only=True)
    assert state["epochs_done"] == 2
    assert all(not k.startswith("backbone.encoder") for k in state["model"])  # only the adapter state
    # the same run name with more epochs continues from the checkpoint
    raw["optim"]["epochs"] = 3
    again = fit(TrainConfig.from_dict(raw), spec)
    assert again.error is None and again.metrics["epoch"] == 3
    with again.checkpoint.as_directory() as directory:
        state = torch.load(f"{directory}/run_state.pt", weights_only=True)
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3]
