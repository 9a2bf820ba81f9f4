import pytest
import torch

from pointpeft_ray import ConfigError
from pointpeft_ray.models import BackboneConfig, FullFinetuneClassifier, PointMAEBackbone
from tests.conftest import random_clouds


def test_published_defaults_and_parameter_count():
    config = BackboneConfig()
    assert (config.trans_dim, config.depth, config.num_heads, config.num_group, config.group_size,
            config.encoder_dims, config.drop_path_rate) == (384, 12, 6, 128, 32, 384, 0.1)
    model = FullFinetuneClassifier(config, num_classes=15)
    assert sum(p.numel() for p in model.parameters()) == 22_093_327  # counted from the published code


def test_parameter_names_match_published_code():
    names = set(FullFinetuneClassifier(BackboneConfig(depth=4), 15).state_dict())
    for name in ["encoder.first_conv.0.weight", "encoder.first_conv.1.running_mean", "encoder.second_conv.3.bias",
                 "pos_embed.0.weight", "pos_embed.2.bias", "cls_token", "cls_pos",
                 "blocks.blocks.3.attn.qkv.weight", "blocks.blocks.3.attn.proj.bias", "blocks.blocks.3.mlp.fc1.weight",
                 "blocks.blocks.0.norm1.weight", "blocks.blocks.0.norm2.bias", "norm.weight",
                 "cls_head_finetune.0.weight", "cls_head_finetune.1.running_var", "cls_head_finetune.8.bias"]:
        assert name in names, name
    assert "blocks.blocks.0.attn.qkv.bias" not in names  # qkv without bias


def test_point_bert_variant_has_reduce_dim_and_its_head(tiny_config):
    config = tiny_config.replace(encoder_dims=32, head_style="point_bert")
    model = FullFinetuneClassifier(config, 5)
    names = set(model.state_dict())
    assert "reduce_dim.weight" in names and model.reduce_dim.in_features == 32
    assert "cls_head_finetune.3.weight" in names and "cls_head_finetune.4.weight" not in names
    assert model.eval()(random_clouds(2, 128, 0)).shape == (2, 5)


@pytest.mark.parametrize("style", ["point_mae", "point_bert"])
def test_head_hidden_width_is_configurable_and_defaults_to_the_published_256(tiny_config, style):
    published = FullFinetuneClassifier(tiny_config.replace(head_style=style), 5).cls_head_finetune
    assert published[0].out_features == 256
    narrow = FullFinetuneClassifier(tiny_config.replace(head_style=style, head_hidden=32), 5)
    assert narrow.cls_head_finetune[0].out_features == 32 and narrow.cls_head_finetune[-1].in_features == 32
    assert narrow.eval()(random_clouds(2, 128, 0)).shape == (2, 5)
    with pytest.raises(ConfigError, match="head_hidden"):
        tiny_config.replace(head_hidden=0)


def test_forward_shapes_and_drop_path_only_in_training(tiny_config):
    model = FullFinetuneClassifier(tiny_config, 7)
    points = random_clouds(3, 200, 1)
    model.eval()
    with torch.no_grad():
        a, b = model(points), model(points)
    assert a.shape == (3, 7) and torch.equal(a, b)
    tokens = PointMAEBackbone(tiny_config).eval()(points)
    assert tokens.shape == (3, 1 + tiny_config.num_group, tiny_config.trans_dim)


def test_positional_embedding_is_added_before_every_block(tiny_config):
    torch.manual_seed(0)
    backbone = PointMAEBackbone(tiny_config.replace(drop_path_rate=0.0)).eval()
    x = torch.randn(2, 5, tiny_config.trans_dim)
    pos = torch.randn(2, 5, tiny_config.trans_dim)
    expected = x
    for block in backbone.blocks.blocks:
        expected = block(expected + pos)
    assert torch.allclose(backbone.blocks(x, pos), expected)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"'tran_dim' \(did you mean 'trans_dim'"):
        BackboneConfig(tran_dim=384)
    with pytest.raises(ConfigError, match="depth"):
        BackboneConfig(depth=0)
    with pytest.raises(ConfigError, match="divisible by num_heads"):
        BackboneConfig(trans_dim=100, num_heads=6)


def test_from_published_yaml_section():
    section = {"NAME": "PointTransformer", "trans_dim": 384, "depth": 12, "drop_path_rate": 0.1, "cls_dim": 40,
               "num_heads": 6, "group_size": 32, "num_group": 64, "encoder_dims": 384}
    config, classes = BackboneConfig.from_published(section)
    assert classes == 40 and config.num_group == 64
    with pytest.raises(ConfigError, match="published model config: .*'group_sizes'"):
        BackboneConfig.from_published({**section, "group_sizes": 3})


def test_too_few_points_is_a_clear_error(tiny_config):
    with pytest.raises(ValueError, match="too small for num_group=16"):
        PointMAEBackbone(tiny_config)(torch.rand(1, 10, 3))
