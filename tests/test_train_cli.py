"""`pointpeft-ray train`: shipped configs, clear errors, Ctrl-C leaves a resumable run."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pointpeft_ray.engine.config import TrainConfig
from tests.test_cli import run_cli
from tests.test_tasks import write_scanobjectnn

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith("pretrain")),
                         ids=lambda p: p.name)
def test_shipped_train_configs_validate(path):
    config = TrainConfig.from_yaml(path)
    assert config.mode in ("peft", "full", "linear")
    if config.data.task.startswith(("scanobjectnn", "modelnet40")):  # real datasets: the published recipe
        assert (config.optim.lr, config.optim.batch_size, config.optim.warmup_epochs) == (5e-4, 32, 10)
        assert config.model.preset == "point_mae" and config.model.checkpoint


def test_missing_checkpoint_or_data_root_is_named_before_any_work(tmp_path):
    result = run_cli("train", str(CONFIGS / "scanobjectnn_pb_t50_rs_peft.yaml"), "--in-process")
    assert result.returncode == 2
    assert "model.checkpoint: file not found: checkpoints/pretrain.pth" in result.stderr
    config = yaml.safe_load((CONFIGS / "modelnet40_peft.yaml").read_text())
    config["model"]["checkpoint"] = None
    (tmp_path / "mn.yaml").write_text(yaml.safe_dump(config))
    result = run_cli("train", str(tmp_path / "mn.yaml"), "--in-process")
    assert result.returncode == 2 and "data.root: folder not found: data/ModelNet" in result.stderr


def _tiny_yaml(tmp_path, epochs: int) -> Path:
    root = write_scanobjectnn(tmp_path / "scan", n=(64, 16), points=256)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "mode": "peft", "model": {"preset": "tiny"},
        "data": {"task": "scanobjectnn/obj_bg", "root": str(root), "cache_dir": str(tmp_path / "cache")},
        "optim": {"epochs": epochs, "warmup_epochs": 1, "batch_size": 8},
    }))
    return path


def test_ctrl_c_leaves_a_run_that_the_same_command_resumes(tmp_path):
    config = _tiny_yaml(tmp_path, epochs=30)
    command = [sys.executable, "-m", "pointpeft_ray.cli", "train", str(config), "--in-process",
               "--storage", str(tmp_path / "runs"), "--name", "interrupted"]
    state = tmp_path / "runs" / "interrupted" / "last" / "run_state.pt"
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not state.is_file() and time.time() < deadline and process.poll() is None:
        time.sleep(0.1)
    assert state.is_file(), "no checkpoint appeared"
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "rerun the same command to resume run 'interrupted'" in err

    shorter = yaml.safe_load(config.read_text())
    shorter["optim"]["epochs"] = 3  # finish quickly: the run resumes and stops at epoch 3
    config.write_text(yaml.safe_dump(shorter))
    done = subprocess.run(command + ["--json", str(tmp_path / "summary.json")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "[resume] from epoch" in done.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["epochs"] >= 3 and summary["best_checkpoint"].endswith("interrupted/best")
    for label in ("best accuracy", "trainable params", "wall time", "best checkpoint", "tensorboard --logdir"):
        assert label in done.stdout


def test_ctrl_c_on_a_ray_run_stops_at_once_with_the_resume_hint(tmp_path):
    """On Ray Train, Ctrl-C stops the workers at once (no epoch trains after it whose
    checkpoint would never be registered) and says how to resume; the rerun does."""
    config = _tiny_yaml(tmp_path, epochs=30)
    run_dir = tmp_path / "runs" / "ray-interrupted"
    command = [sys.executable, "-m", "pointpeft_ray.cli", "train", str(config), "--storage", str(tmp_path / "runs"),
               "--name", "ray-interrupted"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    snapshot_file = run_dir / "checkpoint_manager_snapshot.json"  # written once Ray registers a checkpoint
    while time.time() < deadline and process.poll() is None and not snapshot_file.is_file():
        time.sleep(0.1)
    assert snapshot_file.is_file(), "no checkpoint was registered"
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 130, out
    assert "rerun the same command to resume run 'ray-interrupted'" in out
    # Ray's own INFO chatter stays out of the console (pointpeft-ray -v brings it back)
    assert "Started a local Ray instance" not in out and "Requesting resources" not in out
    assert " epoch   1 " in out  # our own lines come through from the worker
    snapshot = json.loads(snapshot_file.read_text())
    registered = {c["checkpoint_dir_name"] for c in snapshot["checkpoint_results"]}
    last_epoch = max(c["metrics"]["epoch"] for c in snapshot["checkpoint_results"])
    # every epoch the workers finished was registered: none trained on after the interrupt
    printed = [int(line.split("epoch")[1].split()[0]) for line in out.splitlines() if " epoch " in line
               and "loss" in line]
    assert max(printed) <= last_epoch + 1
    folders = {p.name for p in run_dir.glob("checkpoint_*") if p.is_dir()}
    assert len(folders - registered) <= 1  # at most the one being written when the run stopped

    done = subprocess.run(command + ["--epochs", str(last_epoch + 1)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"[resume] from epoch {last_epoch}" in done.stdout + done.stderr
