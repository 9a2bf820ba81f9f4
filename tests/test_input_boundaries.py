"""Input boundaries: each bad input is one clear error naming the file, key or value."""
import subprocess
import sys

import pytest
import torch

from pointpeft_ray.engine.config import TrainConfig
from pointpeft_ray.errors import CheckpointError, ConfigError
from pointpeft_ray.models import PointMAEBackbone, load_checkpoint
from pointpeft_ray.models.presets import get_preset


def test_config_files_refuse_non_utf8_empty_and_non_finite_values(tmp_path):
    binary = tmp_path / "latin1.yaml"
    binary.write_bytes("optim:\n  lr: 1e-3  # caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml: not UTF-8 text \(byte 24"):
        TrainConfig.from_yaml(binary)
    empty = tmp_path / "empty.yaml"
    empty.write_text("\n# only a comment\n")
    with pytest.raises(ConfigError, match="empty.yaml: the file is empty"):
        TrainConfig.from_yaml(empty)
    explicit = tmp_path / "defaults.yaml"
    explicit.write_text("{}\n")
    assert TrainConfig.from_yaml(explicit).optim.lr == 5e-4  # every default, asked for explicitly
    for value in (".inf", ".nan", "-.inf"):
        bad = tmp_path / "inf.yaml"
        bad.write_text(f"optim:\n  lr: {value}\n")
        with pytest.raises(ConfigError, match="lr: Input should be a finite number"):
            TrainConfig.from_yaml(bad)


def test_a_bad_task_option_names_the_option_and_value(tmp_path):
    config = tmp_path / "negative.yaml"
    config.write_text("data:\n  task: synth/hardest\n  cache_dir: %s\n  options: {samples_per_class: -4}\n"
                      "model: {preset: tiny}\noptim: {epochs: 1}\n" % (tmp_path / "cache"))
    run = subprocess.run([sys.executable, "-m", "pointpeft_ray.cli", "train", str(config), "--in-process"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "samples_per_class must be >= 1, got -4" in run.stderr
    assert "Traceback" not in run.stderr


def test_checkpoints_that_are_text_or_hold_too_few_backbone_tensors_are_refused(tmp_path):
    backbone = PointMAEBackbone(get_preset("tiny").backbone)
    text = tmp_path / "notes.pth"
    text.write_text("e" * 200)  # 'e' is an opcode the weights-only unpickler trips over (KeyError)
    with pytest.raises(CheckpointError, match="notes.pth: not a readable torch checkpoint"):
        load_checkpoint(backbone, text)
    state = backbone.state_dict()
    partial = tmp_path / "partial.pth"
    torch.save({"model": {"blocks.blocks.0.norm1.weight": state["blocks.blocks.0.norm1.weight"]}}, partial)
    with pytest.raises(CheckpointError, match=r"partial.pth: holds 1 of the backbone's \d+ feature tensors"):
        load_checkpoint(backbone, partial)
    torch.save({"model": state}, tmp_path / "whole.pth")
    assert load_checkpoint(PointMAEBackbone(get_preset("tiny").backbone), tmp_path / "whole.pth").loaded == len(state)
