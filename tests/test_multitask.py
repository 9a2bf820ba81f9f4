"""Multi-task fine-tuning on a real local Ray: tasks in parallel, one broken task recorded."""
import json

import pandas as pd
import pytest

from pointpeft_ray.distributed.multitask import TaskRun, run_tasks
from pointpeft_ray.engine.config import TrainConfig
from pointpeft_ray.engine.loop import build_seeded_model
from pointpeft_ray.models.peft.model import PointPEFTModel
from pointpeft_ray.results.tables import read_tasks
from tests.conftest import logged


def _config(tmp_path, task, **data) -> TrainConfig:
    return TrainConfig.from_dict({
        "mode": "peft", "model": {"preset": "tiny"},
        "data": {"task": task, "cache_dir": str(tmp_path / "cache"), **data},
        "optim": {"epochs": 2, "warmup_epochs": 1, "batch_size": 15},
    })


def test_tasks_run_in_parallel_and_a_failing_one_is_recorded(local_ray, tmp_path, monkeypatch):
    small = {"options": {"samples_per_class": 4, "points": 256}}
    runs = [TaskRun("clean", _config(tmp_path, "synth/clean", **small)),
            TaskRun("objbg", _config(tmp_path, "synth/objbg", **small)),
            TaskRun("broken", _config(tmp_path, "scanobjectnn/obj_bg", root=str(tmp_path / "no-such-folder")))]
    monkeypatch.setattr("pointpeft_ray.distributed.multitask.HEARTBEAT_S", 0.5)
    with logged() as lines:
        rows = run_tasks(runs, tmp_path / "tasks", max_concurrent=2)
    assert sorted(r["task"] for r in rows) == ["broken", "clean", "objbg"]
    # progress while runs train (a heartbeat naming them), and a line per finished run
    assert any(line.startswith("[tasks] 0/3 done, running: clean") and "1 waiting" in line for line in lines), lines
    # each run leaves its progress, which the heartbeat reads back (epoch e/E)
    from pointpeft_ray.distributed.multitask import _with_epoch

    assert _with_epoch("clean", tmp_path / "tasks") == "clean (epoch 2/2)"
    assert _with_epoch("broken", tmp_path / "tasks") == "broken"  # never trained: the label alone
    assert sum(line.startswith("[task] ") for line in lines) == 3

    table = pd.read_parquet(tmp_path / "tasks" / "tasks.parquet")  # an independent reader
    read_tasks(tmp_path / "tasks" / "tasks.parquet")  # and the schema version checks out
    by_task = table.set_index("task")
    assert by_task.loc["broken", "status"] == "failed" and "no-such-folder" in by_task.loc["broken", "error"]
    for label in ("clean", "objbg"):
        row = by_task.loc[label]
        assert row.status == "completed" and row.epochs == 2 and row.node and 0 <= row.best_accuracy <= 100
        assert json.loads(row.config)["data"]["task"] == f"synth/{label}"
        # each task's adapter loads onto the shared frozen backbone
        config = next(r.config for r in runs if r.label == label)
        model = PointPEFTModel.from_adapter(build_seeded_model(config, 15).backbone,
                                            row.adapter_path)
        assert model.get_nb_trainable_parameters()[0] == row.trainable_params
    epochs = pd.read_parquet(tmp_path / "tasks" / "epochs.parquet")
    assert sorted(epochs.groupby("trial_id").size().items()) == [("clean", 2), ("objbg", 2)]


def test_duplicate_labels_are_refused(tmp_path):
    config = _config(tmp_path, "synth/clean")
    with pytest.raises(ValueError, match="unique"):
        run_tasks([TaskRun("a", config), TaskRun("a", config)], tmp_path / "tasks")


def test_bench_multitask_runs_and_writes_its_figures(local_ray, tmp_path):
    from pointpeft_ray.bench.multitask import run_bench

    out = tmp_path / "bench.json"
    payload = run_bench(preset="tiny", epochs=1, samples_per_class=4, json_path=str(out))
    assert json.loads(out.read_text())["ratio"] == payload["ratio"] > 0
    assert payload["parallel_seconds"] > 0 and payload["sequential_seconds"] > 0


def test_tasks_take_the_pretrained_weights_from_the_object_store_not_the_file(local_ray, tmp_path):
    """The driver reads the checkpoint once; a task never opens the file (here it is gone
    before the task starts) and still fine-tunes on exactly those weights."""
    import ray
    import torch

    from pointpeft_ray.distributed.multitask import _train_task
    from pointpeft_ray.distributed.weights import share_checkpoints
    from pointpeft_ray.models import PointMAEBackbone

    checkpoint = tmp_path / "pretrain.pth"
    config = _config(tmp_path, "synth/clean", options={"samples_per_class": 4, "points": 256})
    config = config.replace(model={"preset": "tiny", "checkpoint": str(checkpoint)}, run_dir=str(tmp_path / "run"))
    torch.manual_seed(7)
    weights = PointMAEBackbone(config.model.backbone).state_dict()
    torch.save({"base_model": weights}, checkpoint)

    shared = share_checkpoints([config, config])  # one entry per distinct file
    assert list(shared) == [str(checkpoint)]
    checkpoint.unlink()
    outcome = ray.get(ray.remote(num_cpus=1)(_train_task).remote(config.model_dump(), shared[str(checkpoint)]))
    assert outcome["row"]["epochs"] == 2 and outcome["row"]["node"] == ray.get_runtime_context().get_node_id()

    backbone = PointMAEBackbone(config.model.backbone)
    backbone.load_state_dict(weights)
    # the adapter's recorded backbone fingerprint matches these weights (from_adapter checks it)
    PointPEFTModel.from_adapter(backbone, outcome["row"]["adapter_path"])


def test_a_two_worker_task_with_a_memory_bank_builds_it_in_a_task_of_its_own(local_ray, tmp_path):
    # The launcher of a multi-worker run holds no CPU: the bank is built by a task that does.
    config = _config(tmp_path, "synth/objbg", options={"samples_per_class": 4, "points": 256})
    config = config.replace(peft=config.peft.replace(memory_bank=True),
                            optim=config.optim.replace(batch_size=16).model_dump())  # split over 2 workers
    assert config.uses_memory_bank()
    rows = run_tasks([TaskRun("ddp", config, cpus=1, workers=2)], tmp_path / "tasks")
    row = rows[0]
    assert row["status"] == "completed", row.get("error")
    assert row["epochs"] == 2 and row["trainable_params"] > 0
    model = PointPEFTModel.from_adapter(build_seeded_model(config, 15).backbone,
                                        row["adapter_path"])
    assert model.get_nb_trainable_parameters()[0] == row["trainable_params"]
