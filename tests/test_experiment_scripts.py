"""The acceptance experiment script's settings reach the right cells (no training here)."""
import importlib.util
import sys
from pathlib import Path

import pytest

from pointpeft_ray.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("experiments_acceptance", ROOT / "scripts" / "experiments_acceptance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(module, monkeypatch, *argv):
    monkeypatch.setattr(sys, "argv", ["experiments_acceptance.py", *argv])
    return module.parse_args()


def test_peft_options_and_head_width_reach_their_cells(monkeypatch, tmp_path):
    script = _script()
    args = _args(script, monkeypatch, "--preset", "tiny", "--head-hidden", "56", "--peft", "adapter_dim=4",
                 "prompt_length=12", "--lr", "full=2e-3", "--out", str(tmp_path))
    assert args.peft == {"adapter_dim": 4, "prompt_length": 12}
    peft = script.cell_config("peft", "hardest", 1, "/some/pretrain.pth", args, tmp_path)
    full = script.cell_config("full", "hardest", 1, "/some/pretrain.pth", args, tmp_path)
    assert peft.peft.adapter_dim == 4 and peft.peft.prompt_length == 12
    assert full.peft.adapter_dim != 4 and full.peft.prompt_length != 12  # baselines: their own settings
    assert full.optim.lr == 2e-3 and peft.optim.lr == script.TINY_LR["peft"] and peft.optim.epochs == args.epochs
    for config, mode in ((peft, "peft"), (full, "full")):
        assert config.mode == mode and config.seed == 1 and config.data.task == "synth/hardest"
        assert config.model.backbone.head_hidden == 56 and config.model.checkpoint == "/some/pretrain.pth"
        assert config.run_dir == str(tmp_path / "cells" / f"hardest-{mode}-seed1")


def test_bad_peft_options_are_named(monkeypatch, tmp_path, capsys):
    script = _script()
    with pytest.raises(SystemExit):
        _args(script, monkeypatch, "--preset", "tiny", "--peft", "adapter_dim")
    assert "KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _args(script, monkeypatch, "--preset", "tiny", "--lr", "probe=1e-3")
    assert "peft, full or linear" in capsys.readouterr().err
    args = _args(script, monkeypatch, "--preset", "tiny", "--peft", "adapter_dims=4", "--out", str(tmp_path))
    with pytest.raises(ConfigError, match="adapter_dims"):
        script.cell_config("peft", "objbg", 0, "/some/pretrain.pth", args, tmp_path)


def test_pretraining_options_reach_the_pretrain_config(monkeypatch, tmp_path):
    script = _script()
    default = script.pretrain_config(_args(script, monkeypatch, "--preset", "tiny", "--out", str(tmp_path)))
    changed = script.pretrain_config(_args(script, monkeypatch, "--preset", "tiny", "--pretrain-epochs", "7",
                                           "--pretrain-samples-per-class", "200", "--out", str(tmp_path)))
    assert changed.optim.epochs == 7 and changed.data.options["samples_per_class"] == 200
    assert changed.data.task == default.data.task == "synth/clean"
    assert changed.data.options["points"] == default.data.options["points"]  # the rest is kept
