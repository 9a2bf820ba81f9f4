"""The training loop as a plain function of a config (in-process)."""
import json
import math

import pytest
import torch

from pointpeft_ray.engine import build
from pointpeft_ray.engine.config import TrainConfig
from pointpeft_ray.engine.epochs import RESTORED_EPOCHS_KEY
from pointpeft_ray.engine.loop import TrainingDivergedError, build_seeded_model, train
from pointpeft_ray.errors import ConfigError
from pointpeft_ray.file_names import ADAPTER_DIR, MODEL_FILE
from pointpeft_ray.models.peft.model import PointPEFTModel
from tests.conftest import logged
from tests.test_tasks import write_scanobjectnn


def tiny_config(tmp_path, mode="peft", **changes):
    root = write_scanobjectnn(tmp_path / "scan", n=(48, 16), points=256)
    raw = {
        "mode": mode,
        "model": {"preset": "tiny"},
        "data": {"task": "scanobjectnn/obj_bg", "root": str(root), "cache_dir": str(tmp_path / "cache")},
        "optim": {"epochs": 2, "warmup_epochs": 1, "batch_size": 8},
        **changes,
    }
    return TrainConfig.from_dict(raw)


@pytest.mark.parametrize("mode", ["peft", "full", "linear"])
def test_every_mode_trains_and_reports(tmp_path, mode):
    reports = []
    result = train(tiny_config(tmp_path, mode), report=reports.append)
    assert [r["epoch"] for r in reports] == [1, 2]
    last = reports[-1]
    for key in ("train_loss", "train_accuracy", "val_accuracy", "val_mean_class_accuracy", "val_loss", "lr"):
        assert math.isfinite(last[key]), key
    assert len(last["val_per_class_accuracy"]) == 15
    assert result.best_epoch in (1, 2) and 0 <= result.best_accuracy <= 100
    # where each epoch's time went: training, evaluation, and the run's clock since train()
    first, second = reports
    assert 0 < first["setup_seconds"] < first["elapsed_seconds"] < second["elapsed_seconds"]
    assert second["train_seconds"] + second["val_seconds"] <= second["elapsed_seconds"] - first["elapsed_seconds"]
    model = build.build_model(tiny_config(tmp_path, mode), 15)
    head = sum(p.numel() for p in model.cls_head_finetune.parameters())
    total = sum(p.numel() for p in model.parameters())
    expected = {"linear": head, "full": total}.get(mode)
    if expected is not None:
        assert result.trainable_params == expected
    else:
        assert head < result.trainable_params < 0.3 * total


def test_schedule_warmup_then_cosine(tmp_path):
    config = TrainConfig.from_dict({"optim": {"epochs": 20, "warmup_epochs": 5, "lr": 1e-3}})
    lrs = [build.lr_at(e, config.optim) for e in range(20)]
    assert lrs[0] == pytest.approx(1e-6) and lrs[5] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(lrs[:5], lrs[1:6])) and all(a > b for a, b in zip(lrs[5:], lrs[6:]))


def test_no_weight_decay_on_1d_biases_and_tokens(tmp_path):
    config = tiny_config(tmp_path)
    model = build.build_model(config, 15)
    decay, no_decay = build.parameter_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim >= 2 and "token" not in names[id(p)] for p in decay["params"])
    assert any("prompt.tokens" == names[id(p)] for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0


def test_linear_probe_keeps_backbone_frozen_and_deterministic(tmp_path):
    model = build.build_model(tiny_config(tmp_path, "linear"), 15)
    build.set_train_mode(model, True)
    assert not model.blocks.training and model.cls_head_finetune.training
    assert all(not p.requires_grad for n, p in model.named_parameters() if not n.startswith("cls_head_finetune"))


def test_nan_loss_stops_with_epoch_and_step(tmp_path):
    config = tiny_config(tmp_path, optim={"epochs": 1, "warmup_epochs": 0, "batch_size": 8, "lr": 1e30})
    with pytest.raises(TrainingDivergedError, match=r"at epoch 1, step \d+"):
        train(config)


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="warmup_epochs"):
        TrainConfig.from_dict({"optim": {"epochs": 5, "warmup_epochs": 5}})
    with pytest.raises(ConfigError, match="config file not found"):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lrr: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: .*'lrr' \(did you mean 'lr'"):
        TrainConfig.from_yaml(bad)


@pytest.mark.parametrize("mode", ["peft", "full"])
def test_rerun_with_the_same_run_dir_resumes_exactly(tmp_path, mode):
    """Epochs 1-2, then a rerun to 3 epochs, equals 3 epochs in one go (RNG state included)."""
    run_dir = tmp_path / "run"
    first = train(tiny_config(tmp_path, mode, run_dir=str(run_dir)))
    assert (run_dir / "last" / "run_state.pt").is_file()
    longer = {"epochs": 3, "warmup_epochs": 1, "batch_size": 8}
    reports = []
    with logged() as messages:
        resumed = train(tiny_config(tmp_path, mode, run_dir=str(run_dir), optim=longer), report=reports.append)
    assert [r["epoch"] for r in reports] == [3]  # epochs 1-2 were not run again
    assert any("[resume] from epoch 2" in m for m in messages)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert resumed.history[:2] == first.history
    # the first report after the resume carries the restored epochs (for a search's record);
    # the run's own history stays as it was
    restored = json.loads(reports[0][RESTORED_EPOCHS_KEY])
    assert [row["epoch"] for row in restored] == [1, 2]
    assert restored[1]["val_accuracy"] == pytest.approx(first.history[1]["val_accuracy"])
    assert RESTORED_EPOCHS_KEY not in resumed.history[-1]
    straight = train(tiny_config(tmp_path, mode, optim=longer))
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert resumed.history[-1][key] == pytest.approx(straight.history[-1][key], rel=1e-5), key


def _state(path):
    return torch.load(path, weights_only=True)


def test_best_and_last_checkpoints_and_usable_best_adapter(tmp_path):
    run_dir = tmp_path / "run"
    config = tiny_config(tmp_path, run_dir=str(run_dir), optim={"epochs": 4, "warmup_epochs": 1, "batch_size": 8})
    result = train(config)
    last, best = _state(run_dir / "last" / "run_state.pt"), _state(run_dir / "best" / "run_state.pt")
    assert last["epochs_done"] == 4 and best["epochs_done"] == result.best_epoch
    assert best["best_accuracy"] == result.best_accuracy == max(h["val_accuracy"] for h in result.history)
    # The exported adapter is the best epoch's weights, and loads onto the same backbone.
    model = build_seeded_model(config, 15)
    peft = PointPEFTModel.from_adapter(model.backbone, run_dir / "best" / ADAPTER_DIR)
    exported = peft.adapter_state_dict()
    assert all(torch.equal(exported[k], v) for k, v in best["model"].items())
    assert not list(run_dir.glob(".*"))  # no temporaries left behind


def test_full_fine_tune_exports_classifier_weights(tmp_path):
    run_dir = tmp_path / "run"
    config = tiny_config(tmp_path, "full", run_dir=str(run_dir), optim={"epochs": 1, "warmup_epochs": 0, "batch_size": 8})
    train(config)
    fresh = build.build_model(config.replace(model={"preset": "tiny", "checkpoint": str(run_dir / "best" / MODEL_FILE)}),
                              15)
    saved = _state(run_dir / "best" / MODEL_FILE)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in saved.items())


def test_tensorboard_event_files_hold_the_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    train(tiny_config(tmp_path, run_dir=str(run_dir)))
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/train", "loss/val", "accuracy/val", "optim/lr", "speed/samples_per_second"} <= tags
    assert [e.step for e in events.Scalars("loss/train")] == [1, 2]


def test_deferred_guard_skips_a_non_finite_step_on_the_device_and_stops_at_the_check():
    """The GPU path (fused AdamW), run on the CPU: a NaN step changes nothing (weights
    and Adam's step count) and the epoch's check names it; the finite steps train as if
    the NaN step had never been taken."""
    from pointpeft_ray.engine.loop import StepGuard

    torch.manual_seed(0)
    inputs = [torch.randn(4, 3) for _ in range(3)]
    poison = [1.0, float("nan"), 1.0]

    def run(steps):
        torch.manual_seed(1)
        model = torch.nn.Linear(3, 2)
        # the fused AdamW that build.make_optimizer gives on a GPU; torch runs it on the CPU too
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
        guard = StepGuard(optimizer, list(model.parameters()), grad_clip=10.0, epoch=0)
        assert guard.deferred
        for step in steps:
            guard.step((model(inputs[step]) * poison[step]).square().mean(), step, samples=4)
        return model, optimizer, guard

    model, optimizer, guard = run([0, 1, 2])
    with pytest.raises(TrainingDivergedError, match=r"loss is nan at epoch 1, step 2"):
        guard.check()
    reference, reference_optimizer, reference_guard = run([0, 2])
    assert math.isfinite(reference_guard.check())
    for got, want in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    steps = [float(s["step"]) for s in optimizer.state.values()]
    assert steps == [float(s["step"]) for s in reference_optimizer.state.values()] == [2.0, 2.0]
