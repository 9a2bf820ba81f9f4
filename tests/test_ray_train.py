"""Fine-tuning through Ray Train (TorchTrainer) on a real local Ray cluster."""
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from pointpeft_ray.distributed.train import RayRunSettings, best_checkpoint, fit
from pointpeft_ray.engine.config import TrainConfig
from pointpeft_ray.file_names import ADAPTER_DIR
from tests.test_tasks import write_scanobjectnn


def _state(checkpoint):
    with checkpoint.as_directory() as directory:
        return torch.load(f"{directory}/run_state.pt", weights_only=True)


def test_ray_train_runs_checkpoints_and_resumes_by_name(local_ray, tmp_path):
    root = write_scanobjectnn(tmp_path / "scan", n=(48, 16), points=256)
    raw = {"mode": "peft", "model": {"preset": "tiny"},
           "data": {"task": "scanobjectnn/obj_bg", "root": str(root), "cache_dir": str(tmp_path / "cache")},
           "optim": {"epochs": 2, "warmup_epochs": 1, "batch_size": 8}}
    settings = RayRunSettings(workers=1, storage_path=str(tmp_path / "ray"), name="tiny-peft")
    result = fit(TrainConfig.from_dict(raw), settings)
    assert result.error is None and result.metrics["epoch"] == 2
    assert 0 <= result.metrics["val_accuracy"] <= 100 and len(result.metrics["val_per_class_accuracy"]) == 15
    state = _state(result.checkpoint)
    assert state["epochs_done"] == 2
    assert all(not k.startswith("backbone.encoder") for k in state["model"])  # only the adapter state
    best = best_checkpoint(result)
    assert _state(best)["epochs_done"] == result.metrics["best_epoch"]
    assert (Path(best.path) / ADAPTER_DIR / "adapter_config.json").is_file()
    assert list((tmp_path / "ray" / "tiny-peft" / "tensorboard").glob("events.out.tfevents.*"))
    # the same run name with more epochs continues from the checkpoint
    raw["optim"]["epochs"] = 3
    again = fit(TrainConfig.from_dict(raw), settings)
    assert again.error is None and again.metrics["epoch"] == 3
    assert [h["epoch"] for h in _state(again.checkpoint)["history"]] == [1, 2, 3]


SYNTH_OPTIONS = {"samples_per_class": 16, "points": 256}


@pytest.fixture(scope="session")
def tiny_pretrained(tmp_path_factory):
    """A tiny backbone pre-trained by our Point-MAE loop (~10 s): fine-tuning a random
    frozen backbone learns too little in a few epochs to compare runs."""
    from pointpeft_ray.pretrain.cache import ensure_pretrained
    from pointpeft_ray.pretrain.config import PretrainConfig

    cache = tmp_path_factory.mktemp("synth-cache")
    config = PretrainConfig.from_dict({
        "model": {"preset": "tiny"},
        "data": {"task": "synth/clean", "cache_dir": str(cache), "options": SYNTH_OPTIONS},
        "optim": {"epochs": 10, "warmup_epochs": 1, "batch_size": 16}})
    return str(ensure_pretrained(config)), str(cache)


def _synthetic_config(pretrained, epochs: int) -> TrainConfig:
    checkpoint, cache = pretrained
    return TrainConfig.from_dict({
        "mode": "peft", "model": {"preset": "tiny", "checkpoint": checkpoint}, "seed": 0,
        "data": {"task": "synth/clean", "cache_dir": cache, "options": SYNTH_OPTIONS},
        "optim": {"epochs": epochs, "warmup_epochs": 1, "batch_size": 16, "lr": 5e-3},
    })


def test_two_ddp_workers_match_one_worker(local_ray, tiny_pretrained, tmp_path):
    """optim.batch_size is global: 2 workers x 8 follow the same path as 1 x 16, up to
    augmentation draws and head batch-norm statistics."""
    config = _synthetic_config(tiny_pretrained, epochs=8)
    one = fit(config, RayRunSettings(workers=1, storage_path=str(tmp_path / "ray"), name="one"))
    two = fit(config, RayRunSettings(workers=2, storage_path=str(tmp_path / "ray"), name="two"))
    assert one.error is None and two.error is None
    chance = 100 / 15
    for result in (one, two):
        assert result.metrics["epoch"] == 8 and result.metrics["best_accuracy"] > 3 * chance
    print("DDP parity: 1 worker", one.metrics["best_accuracy"], "2 workers", two.metrics["best_accuracy"],
          "train loss", one.metrics["train_loss"], two.metrics["train_loss"])
    assert abs(one.metrics["best_accuracy"] - two.metrics["best_accuracy"]) <= 10.0
    assert two.metrics["train_loss"] == pytest.approx(one.metrics["train_loss"], rel=0.15)


def _our_train_workers() -> list[psutil.Process]:
    """Ray Train worker processes of the cluster this test session started (its descendants)."""
    return [p for p in psutil.Process().children(recursive=True) if "RayTrainWorker" in " ".join(_cmdline(p))]


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def test_killed_worker_resumes_from_last_checkpoint_and_finishes(local_ray, tiny_pretrained, tmp_path):
    config = _synthetic_config(tiny_pretrained, epochs=4)
    settings = RayRunSettings(workers=1, storage_path=str(tmp_path / "ray"), name="killed", max_failures=1)
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.setdefault("result", fit(config, settings)))
    runner.start()
    run_dir = tmp_path / "ray" / "killed"
    deadline = time.time() + 240
    while not list(run_dir.glob("checkpoint_*/run_state.pt")) and time.time() < deadline:
        time.sleep(0.2)
    assert list(run_dir.glob("checkpoint_*")), "no checkpoint appeared"
    workers = _our_train_workers()
    assert workers, "no Ray Train worker process found"
    for worker in workers:
        os.kill(worker.pid, signal.SIGKILL)
    runner.join(timeout=300)
    result = outcome["result"]
    assert result.error is None, result.error
    history = _state(result.checkpoint)["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]  # each epoch once, none lost
    assert all(not w.is_running() for w in workers)


def test_embedded_ray_gets_the_train_settings_and_a_users_own_win(monkeypatch):
    """ensure_ray without an address starts Ray with Ray Train's fast health checks and
    without the per-run preemption watcher (one node nothing drains); a value the user
    set is kept. Ray itself is not started here: ray.init is replaced."""
    import ray

    from pointpeft_ray.distributed.cluster import ensure_ray

    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.update(kwargs, env=dict(os.environ)))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", raising=False)
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "1.5")
    ensure_ray(None)
    assert seen["address"] == "local" and seen["_node_ip_address"] == "127.0.0.1"
    assert seen["env"]["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"
    assert seen["env"]["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "1.5"
    # a cluster given by address is the user's: nothing is set for it
    seen.clear()
    monkeypatch.delenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")
    ensure_ray("127.0.0.1:6379")
    assert seen["address"] == "127.0.0.1:6379" and "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER" not in seen["env"]
