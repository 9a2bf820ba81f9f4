"""The pre-trained backbone shipped with the package is what its config says, loads
weights-only into the tiny preset, and `builtin:NAME` resolves to it."""
import hashlib
from pathlib import Path

import pytest
import torch

from pointpeft_ray import assets
from pointpeft_ray.engine.config import TrainConfig
from pointpeft_ray.errors import ConfigError
from pointpeft_ray.models import PointMAEBackbone, load_checkpoint
from pointpeft_ray.models.presets import get_preset
from pointpeft_ray.pretrain.cache import weights_key
from pointpeft_ray.pretrain.config import PretrainConfig

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", assets.builtin_names())
def test_shipped_file_matches_its_manifest_and_config(name):
    manifest = assets.manifest(name)
    path = assets.FOLDER / manifest["file"]
    assert path.stat().st_size <= 3 * 2**20  # small enough to ship
    assert hashlib.sha256(path.read_bytes()).hexdigest() == manifest["sha256"]
    config = PretrainConfig.from_yaml(ROOT / manifest["config"])
    assert weights_key(config) == manifest["weights_key"]  # the file was made by exactly these settings
    assert manifest["command"] == f"pointpeft-ray pretrain {manifest['config']} --in-process"
    backbone = PointMAEBackbone(get_preset(manifest["preset"]).backbone)
    report = load_checkpoint(backbone, path)  # weights_only; every feature tensor present
    assert report.loaded > 0 and not [k for k in report.missing if not k.startswith("cls_")]
    assert all(torch.isfinite(t).all() for t in backbone.state_dict().values())


def test_builtin_checkpoint_names_resolve_in_configs(tmp_path):
    config = TrainConfig.from_dict({"model": {"preset": "tiny", "checkpoint": "builtin:tiny-synth-clean"}})
    assert Path(config.model.checkpoint) == assets.FOLDER / "tiny-synth-clean.pth"
    config.check_paths()
    with pytest.raises(ConfigError, match="no built-in checkpoint 'tiny'; shipped: tiny-synth-clean"):
        TrainConfig.from_dict({"model": {"checkpoint": "builtin:tiny"}})
