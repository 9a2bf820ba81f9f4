"""`recipe: published` and `PointPEFTConfig.published()`: each switch does what the
published Point-PEFT code does (MAE/tools/runner_cache_prompt.py, MAE/models/*)."""
import math

import pytest
import torch
import torch.nn.functional as F

from pointpeft_ray.data.split import PointSplit
from pointpeft_ray.data.tasks import get_task, task_loader
from pointpeft_ray.data.transforms import (RotateUp, ScaleTranslate, ShufflePoints, Voting, build_augmentation,
                                           build_augmentation_for)
from pointpeft_ray.engine import build
from pointpeft_ray.engine.config import TrainConfig
from pointpeft_ray.engine.loop import train
from pointpeft_ray.errors import ConfigError
from pointpeft_ray.models import PointMAEBackbone, PointPEFTConfig, get_peft_model
from pointpeft_ray.models.peft.config import PUBLISHED_BEHAVIOUR
from pointpeft_ray.models.ops import farthest_point_sample, gather_points
from pointpeft_ray.models.peft.geometry import token_geometry
from pointpeft_ray.models.peft.layers import BottleneckAdapter
from pointpeft_ray.models.peft.prompt import retrieve_prompt_source
from tests.conftest import random_clouds
from tests.test_engine_loop import tiny_config as tiny_train_config

SMALL = dict(prompt_depth=2, neighbours=4, prompt_length=5, top_k=3, bank_num_group=8)


def _model(tiny_config, config: PointPEFTConfig, seed=0):
    torch.manual_seed(seed)
    return get_peft_model(PointMAEBackbone(tiny_config), config, 5)


def _with_bank(model, seed=0):
    model.build_memory_bank([random_clouds(6, 160, seed + i) for i in range(2)], progress=False)
    return model


# ---- config: the preset and the recipe -------------------------------------------------

def test_published_preset_sets_every_behaviour_and_keeps_sizes():
    config = PointPEFTConfig.published(prompt_depth=3)
    for name, value in PUBLISHED_BEHAVIOUR.items():
        assert getattr(config, name) == value, name
    assert config.prompt_depth == 3 and config.prompt_length == 10 and config.adapter_dim == 16
    ours = PointPEFTConfig()
    assert all(getattr(ours, name) != value for name, value in PUBLISHED_BEHAVIOUR.items()), \
        "every published switch differs from our default (else it is not a switch)"


def test_recipe_selects_the_published_peft_preset_unless_peft_preset_says_otherwise():
    published = TrainConfig.from_dict({"recipe": "published", "model": {"preset": "tiny"}})
    assert published.peft.frozen_batchnorm == "train"
    assert published.peft.prompt_depth == 1  # the tiny preset's sizes stay
    assert published.peft.bank_num_group == 16  # its pre-training's grouping, not Point-MAE's 64
    mixed = TrainConfig.from_dict({"recipe": "published", "peft": {"preset": "ours", "top_k": 4}})
    assert mixed.peft.frozen_batchnorm == "eval" and mixed.peft.top_k == 4
    alone = TrainConfig.from_dict({"peft": {"preset": "published", "adapter_dropout": 0.2}})
    assert alone.peft.bank_normalize is False and alone.peft.adapter_dropout == 0.2
    with pytest.raises(ConfigError, match=r"peft: preset: Input should be 'ours' or 'published' \(got 'publshed'\)"):
        TrainConfig.from_dict({"peft": {"preset": "publshed"}})
    with pytest.raises(ConfigError, match="recipe"):
        TrainConfig.from_dict({"recipe": "paper"})


def test_cls_bank_source_is_refused_with_the_pretrain_encoder():
    with pytest.raises(ConfigError, match="bank_source='cls' needs bank_encoder='finetune'"):
        PointPEFTConfig(bank_encoder="pretrain", bank_source="cls")


# ---- model behaviour --------------------------------------------------------------------

def test_frozen_batchnorm_statistics_move_under_published_not_under_ours(tiny_config):
    clouds = random_clouds(6, 160, 7)
    moved = {}
    for mode in ("eval", "train"):
        model = _with_bank(_model(tiny_config, PointPEFTConfig.published(**SMALL, frozen_batchnorm=mode)))
        bn = model.backbone.encoder.first_conv[1]
        before = bn.running_mean.clone()
        model.train()
        model(clouds, sample_index=torch.arange(6))
        moved[mode] = not torch.equal(before, bn.running_mean)
        # the bank's queries keep the pre-trained statistics either way
        assert torch.equal(model.frozen_reference.get("encoder.first_conv.1.running_mean"), before)
        tuned = {k for k in model.adapter_state_dict() if k.startswith("backbone.encoder.")}
        assert bool(tuned) == (mode == "train")  # saved with the adapter only when they move
    assert moved == {"eval": False, "train": True}


def test_bank_queries_use_the_pretrained_statistics_after_they_drift(tiny_config):
    model = _with_bank(_model(tiny_config, PointPEFTConfig.published(**SMALL)))
    clouds = random_clouds(6, 160, 0)  # the bank's first batch
    before = model.frozen_global_features(clouds)[0]
    model.train()
    for seed in range(3):
        model(random_clouds(6, 160, seed) * 3, sample_index=torch.arange(6))
    assert torch.allclose(model.frozen_global_features(clouds)[0], before, atol=1e-6)
    assert torch.allclose(model.memory_bank.max_features[:6], before, atol=1e-5)


def test_published_bank_maths_is_unit_query_dot_raw_rows():
    gen = torch.Generator().manual_seed(0)
    query, bank = torch.randn(3, 8, generator=gen), torch.randn(20, 8, generator=gen) * 4
    source = retrieve_prompt_source(query, bank, F.normalize(bank, dim=-1), 4, 1.0, normalize=False)
    scores = (query / query.norm(dim=-1, keepdim=True)) @ bank.T
    top = scores.topk(4, dim=-1)
    rows = bank[top.indices]
    retrieved = (top.values.softmax(-1).unsqueeze(-1) * rows).sum(1)
    assert torch.allclose(source, torch.cat([query[:, None], retrieved[:, None], rows], 1), atol=1e-6)
    cosine = retrieve_prompt_source(query, bank, F.normalize(bank, dim=-1), 4, 1.0, normalize=True)
    assert not torch.allclose(cosine, source)


def test_published_adapters_start_xavier_with_dropout():
    ours, published = BottleneckAdapter(16, 4, True), BottleneckAdapter(16, 4, True, init="xavier", dropout=0.1)
    assert torch.count_nonzero(ours.up.weight) == 0 and torch.count_nonzero(published.up.weight) > 0
    bound = math.sqrt(6 / (16 + 4))
    assert published.up.weight.abs().max() <= bound and published.down.bias.abs().max() < 1e-4
    assert published.dropout.p == 0.1
    published.train()
    x = torch.randn(64, 16)
    assert not torch.equal(published(x), published(x))  # dropout inside the bottleneck
    published.eval()
    assert torch.equal(published(x), published(x))
    with pytest.raises(ValueError, match="init must be 'zero' or 'xavier', got 'kaiming'"):
        BottleneckAdapter(16, 4, True, init="kaiming")


def test_prompt_dropout_acts_on_the_tokens_alone_when_published(tiny_config):
    for where in ("prompt", "tokens"):
        config = PointPEFTConfig.published(**SMALL, prompt_dropout_on=where, prompt_dropout=0.5, adapter_dropout=0.0)
        model = _with_bank(_model(tiny_config, config)).train()
        source = torch.randn(4, 5, tiny_config.trans_dim) * 10
        torch.manual_seed(3)
        prompts = model.prompt.prompts_for(0, 4, source)
        bank_term = model.prompt.source_adapters[0](source)
        # published: dropout(tokens) + bank term: a dropped element leaves the bank term exactly;
        # ours drops the sum: a dropped element is 0
        assert bool((prompts == bank_term).any()) == (where == "tokens")
        assert bool((prompts == 0).any()) == (where == "prompt")


def test_published_propagation_weights_every_subcentre_by_inverse_squared_distance(tiny_config):
    centres = random_clouds(2, 16, 3)
    config = PointPEFTConfig.published(**SMALL)
    geometry = token_geometry(centres, config)
    subs = config.subcentres_for(16)
    assert geometry.interp_idx.shape == (2, 16, subs)
    sub_xyz = torch.stack([centres[b][geometry.subcentre_rows[b * subs:(b + 1) * subs] - b * 16] for b in range(2)])
    inverse = 1 / ((centres[:, :, None] - sub_xyz[:, None]).square().sum(-1) + 1e-8)
    assert torch.allclose(geometry.interp_weight, inverse / inverse.sum(-1, keepdim=True), atol=1e-6)
    ours = token_geometry(centres, PointPEFTConfig(**{k: v for k, v in SMALL.items() if k != "bank_num_group"}))
    assert ours.interp_idx.shape == (2, 16, 3)


def test_published_row_offset_reads_the_next_samples_rows(tiny_config):
    """The published prompted blocks index rows b*G + j of a tensor of G + P rows per sample."""
    config = PointPEFTConfig.published(**SMALL)
    model = _with_bank(_model(tiny_config, config)).eval()
    clouds = random_clouds(3, 160, 11)
    changed = clouds.clone()
    changed[0] = random_clouds(1, 160, 12)[0]
    with torch.no_grad():
        alone = model(clouds[1:2])
        first, second = model(clouds), model(changed)
    assert not torch.allclose(first[1], second[1]), "sample 1 reads sample 0's rows, as published"
    fixed = _with_bank(_model(tiny_config, config.replace(prompt_row_offset="per_sample"))).eval()
    with torch.no_grad():
        assert torch.allclose(fixed(clouds)[1], fixed(changed)[1], atol=1e-5)
        assert torch.allclose(fixed(clouds[1:2])[0], fixed(clouds)[1], atol=1e-5)
    assert alone.shape == (1, 5)


def test_prompt_coordinates_join_the_grouping_and_learn(tiny_config):
    model = _with_bank(_model(tiny_config, PointPEFTConfig.published(**SMALL))).train()
    assert model.prompt.coordinates.shape == (5, 3)
    logits = model(random_clouds(6, 160, 1), sample_index=torch.arange(6))
    logits.square().sum().backward()
    assert model.prompt.coordinates.grad is not None and model.prompt.coordinates.grad.abs().sum() > 0
    model.eval()
    clouds = random_clouds(2, 160, 4)
    with torch.no_grad():
        before = model(clouds)
        model.prompt.coordinates.mul_(20)  # far out: FPS now starts among them and picks them
        assert not torch.allclose(before, model(clouds))


def test_published_drop_path_skips_attention(tiny_config):
    """Published: no drop-path on the attention branch. With the MLP zeroed, the only
    randomness left in a PEFT block is drop-path: none under the published style."""
    base = dict(SMALL, prompt_dropout=0.0, adapter_dropout=0.0, geometry_adapter=False, memory_bank=False)
    for style, random in (("published", False), ("ours", True)):
        model = _model(tiny_config, PointPEFTConfig(**base, drop_path_style=style, frozen_batchnorm="eval"))
        for block in model.backbone.blocks.blocks:
            block.drop_path.prob = 0.9
            torch.nn.init.zeros_(block.mlp.fc2.weight)
            torch.nn.init.zeros_(block.mlp.fc2.bias)
        model.train()
        torch.manual_seed(0)
        x = torch.randn(8, 17, tiny_config.trans_dim)
        outs = [model._run_block(2, model.backbone.blocks.blocks[2], x, None, None) for _ in range(4)]
        differ = any(not torch.allclose(outs[0], o) for o in outs[1:])
        assert differ == random, style


# ---- training recipe ------------------------------------------------------------------

def test_published_scanobjectnn_augmentation_shuffles_scales_and_rotates_once_per_batch():
    augment = build_augmentation("published_scanobjectnn")
    assert augment.steps == (ShufflePoints(), ScaleTranslate(0.9, 1.1, 0.0), RotateUp(per_batch=True))
    points = random_clouds(4, 64, 0)
    gen = torch.Generator().manual_seed(1)
    shuffled = ShufflePoints()(points, gen)
    assert not torch.equal(shuffled, points)
    assert torch.equal(shuffled.sort(dim=1).values, points.sort(dim=1).values)  # same points, new order
    scaled = ScaleTranslate(0.9, 1.1, 0.0)(points, gen)
    ratio = scaled / points
    assert ((ratio > 0.9 - 1e-5) & (ratio < 1.1 + 1e-5)).all()
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-4)  # one scale per axis per cloud
    assert not torch.allclose(ratio[0, 0], ratio[1, 0])  # drawn per cloud
    same = points[:1].expand(4, -1, -1)
    once = RotateUp(per_batch=True)(same, gen)
    assert torch.allclose(once, once[:1].expand_as(once), atol=1e-6)  # one angle for the batch
    assert not torch.allclose(once[0], same[0])
    per_cloud = RotateUp()(same, gen)
    assert not torch.allclose(per_cloud[0], per_cloud[1])
    assert torch.allclose(once[..., 1], same[..., 1])  # about the up (y) axis
    assert build_augmentation_for("rotate", "published").steps == augment.steps
    assert build_augmentation_for("rotate", "ours") == RotateUp()
    assert build_augmentation_for("scale_translate", "published") == build_augmentation("scale_translate")


def _first_point_ranks(batch):
    """Which stored point each cloud starts with (the grouping's FPS start): its rank by
    y, which the published augmentation keeps (positive scale of y, rotation about y)."""
    order = batch.index.argsort()
    points = batch.points[order]
    return (points[:, :, 1] < points[:, :1, 1]).sum(dim=1)


def test_fps_start_point_differs_across_epochs_under_the_published_recipe():
    split = PointSplit(random_clouds(8, 64, 0).numpy(), torch.arange(8).remainder(2).numpy(), ["a", "b"])
    starts = {}
    for recipe in ("ours", "published"):
        loader = task_loader(get_task("scanobjectnn/obj_bg"), split, "train", 8, recipe=recipe)
        starts[recipe] = []
        for epoch in range(3):
            loader.set_epoch(epoch)
            starts[recipe].append(_first_point_ranks(next(iter(loader))))
    stored = (torch.from_numpy(split.points[:, :, 1]) < torch.from_numpy(split.points[:, :1, 1])).sum(dim=1)
    assert all(torch.equal(ranks, stored) for ranks in starts["ours"])
    published = starts["published"]
    assert not torch.equal(published[0], published[1]) and not torch.equal(published[1], published[2])


def test_published_voting_draws_fresh_subsets_of_all_points():
    clouds = random_clouds(3, 120, 0)
    voting = Voting(4, "published", num_points=100)
    assert voting.draws_points
    views = voting.views_of(clouds, torch.Generator().manual_seed(0))
    assert len(views) == 4 and all(v.shape == (3, 100, 3) for v in views)
    assert not any(torch.equal(v, clouds[:, :100]) for v in views)  # no unchanged view
    ours = Voting(4, "ours", num_points=100).views_of(clouds[:, :100], torch.Generator().manual_seed(0))
    assert torch.equal(ours[0], clouds[:, :100])
    # no voting: farthest point sampling of num_points (published validate(): misc.fps)
    near_origin = clouds.clone()
    near_origin[:, 5] = 0.01
    single = Voting(1, "published", num_points=100).views_of(near_origin, torch.Generator())[0]
    fps = gather_points(near_origin, farthest_point_sample(near_origin, 100))
    assert torch.equal(single, fps)
    assert not (single == near_origin[:, 5:6]).all(-1).any()  # the kernel never picks it
    assert torch.equal(Voting(1, "ours", 100).views_of(clouds, torch.Generator())[0], clouds[:, :100])


def test_published_weight_decay_rule_decays_prompt_tokens_cls_pos_and_coordinates(tiny_config):
    model = _model(tiny_config, PointPEFTConfig.published(**SMALL))
    names = {id(p): n for n, p in model.named_parameters()}

    def decayed(recipe):
        groups = build.parameter_groups(model, 0.05, recipe)
        return {names[id(p)] for p in groups[0]["params"]}

    published, ours = decayed("published"), decayed("ours")
    for name in ("prompt.tokens", "backbone.cls_pos", "prompt.coordinates"):
        assert name in published
    assert "prompt.tokens" not in ours and "backbone.cls_pos" not in ours
    assert "backbone.cls_token" not in published | ours
    assert not any(n.endswith(".bias") for n in published)


def test_published_schedule_is_timm_cosine_stepped_after_each_epoch():
    config = TrainConfig.from_dict({"recipe": "published", "optim": {"epochs": 300, "warmup_epochs": 10,
                                                                     "lr": 5e-4}})

    def timm(t):  # CosineLRScheduler(t_initial=300, warmup_t=10, warmup_lr_init=1e-6, lr_min=1e-6)
        if t < 10:
            return 1e-6 + t * (5e-4 - 1e-6) / 10
        return 1e-6 + 0.5 * (5e-4 - 1e-6) * (1 + math.cos(math.pi * t / 300))

    assert build.lr_at(0, config.optim, config.recipe) == pytest.approx(1e-6) and build.lr_at(1, config.optim, config.recipe) == pytest.approx(1e-6)
    for epoch in (2, 10, 11, 12, 150, 299):
        assert build.lr_at(epoch, config.optim, config.recipe) == pytest.approx(timm(epoch - 1)), epoch


def test_a_published_recipe_run_trains_end_to_end(tmp_path):
    config = tiny_train_config(tmp_path, recipe="published",
                               peft={"bank_num_group": 8})
    reports = []
    result = train(config, report=reports.append)
    assert len(reports) == 2 and math.isfinite(reports[-1]["train_loss"])
    assert 0 <= result.best_accuracy <= 100
