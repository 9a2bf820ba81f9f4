"""A published Point-MAE checkpoint gives the same logits in our classifier as in the published code.

We cannot download checkpoints or run the published CUDA code, so the "published side"
is ``published_reference.py``: an independent, deliberately plain re-implementation of
Point-MAE's fine-tune ``PointTransformer`` with the published attribute names, the
published FPS rules (first index 0, points within the 1e-3 squared-norm ball skipped,
strict-> ties) and brute-force kNN.  Random weights (BatchNorm running statistics
included) are written in the published checkpoint layouts and loaded with our
``load_checkpoint``; logits must agree to float32 round-off.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import published_reference as ref  # noqa: E402

from pointpeft_ray.models import (  # noqa: E402
    BackboneConfig,
    FullFinetuneClassifier,
    PointMAEBackbone,
    load_checkpoint,
)
from pointpeft_ray.models import CheckpointError  # noqa: E402

ATOL = 1e-5
RTOL = 1e-5
NUM_CLASSES = 11  # deliberately not 15 / 40

SMALL = dict(trans_dim=64, depth=2, num_heads=4, num_group=16, group_size=8, encoder_dims=64, drop_path_rate=0.1)
SMALL_POINTS = 256
MODERATE = dict(trans_dim=96, depth=3, num_heads=6, num_group=32, group_size=16, encoder_dims=96, drop_path_rate=0.1)
MODERATE_POINTS = 512


# --------------------------------------------------------------------------- helpers


def _reference(shape: dict, num_classes: int = NUM_CLASSES, seed: int = 1) -> ref.PointTransformer:
    model = ref.PointTransformer(ref.make_config(**shape, cls_dim=num_classes))
    return ref.randomize_(model, seed=seed).eval()


def _ours_classifier(shape: dict, num_classes: int = NUM_CLASSES) -> FullFinetuneClassifier:
    torch.manual_seed(1234)  # a different init than the reference's, so loading must do the work
    return FullFinetuneClassifier(BackboneConfig(**shape), num_classes)


def _ours_backbone(shape: dict) -> PointMAEBackbone:
    torch.manual_seed(1234)
    return PointMAEBackbone(BackboneConfig(**shape))


def _special_clouds(n: int, seed: int) -> torch.Tensor:
    """Two clouds built to exercise the published FPS rules (B=2, n points each).

    Cloud 0: points on a thick ring of radius ~1, a dozen points inside the 1e-3
    squared-norm ball around the origin (which textbook FPS picks once the ring is
    covered, and the published kernel skips), and exact duplicates of other points (of
    point 0 and of a near-origin point too).
    Cloud 1: the same but point 0 sits exactly at the origin: the published kernel still
    takes index 0 first and measures every distance from there.
    """
    g = torch.Generator().manual_seed(seed)
    clouds = []
    for variant in range(2):
        # a thick ring: once a handful of centres cover it, the origin is the farthest spot
        angle = torch.rand(n, generator=g) * (2 * torch.pi)
        radius = 0.9 + 0.1 * torch.rand(n, generator=g)
        height = 0.2 * torch.rand(n, generator=g) - 0.1
        pts = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle), height], dim=1)
        perm = torch.randperm(n - 1, generator=g) + 1  # never index 0 here
        near = perm[:12]
        direction = torch.randn(12, 3, generator=g)
        direction = direction / direction.norm(dim=1, keepdim=True)
        radius = 0.002 + 0.026 * torch.rand(12, 1, generator=g)  # |p|^2 <= 7.8e-4 < 1e-3
        pts[near] = direction * radius
        dup_targets = perm[12:36]
        dup_sources = perm[36:60]
        pts[dup_targets] = pts[dup_sources]
        pts[perm[60]] = pts[0]  # a duplicate of the always-first point
        pts[perm[61]] = pts[near[0]]  # a duplicate inside the skipped ball
        if variant == 1:
            pts[0] = 0.0
        clouds.append(pts)
    return torch.stack(clouds).contiguous()


def _clouds(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(3, n, 3, generator=g) * 0.5
    cube = torch.rand(2, n, 3, generator=g) * 2.0 - 1.0
    return {"gaussian": gaussian, "cube": cube, "dup_and_origin": _special_clouds(n, seed + 1)}


@torch.no_grad()
def _logits(model: torch.nn.Module, points: torch.Tensor) -> torch.Tensor:
    model.eval()
    return model(points)


def _strip_module(keys) -> set[str]:
    return {k[len("module.") :] if k.startswith("module.") else k for k in keys}


def _shape_pattern(shape) -> str:
    """Regex for a shape written as (a, b), [a, b], torch.Size([a, b]) or (a,)."""
    inner = r",\s*".join(str(int(s)) for s in shape)
    return r"[\[(]\s*" + inner + r"\s*,?\s*[\])]"


def _assert_names_a_mismatch(message: str, mismatched: dict[str, tuple[tuple, tuple]]) -> None:
    named = [k for k in mismatched if re.search(r"(?<![\w.])" + re.escape(k) + r"(?![\w.])", message)]
    assert named, f"the error names none of the mismatched keys {sorted(mismatched)[:6]}...: {message!r}"
    for key in named:
        ckpt_shape, model_shape = mismatched[key]
        if re.search(_shape_pattern(ckpt_shape), message) and re.search(_shape_pattern(model_shape), message):
            return
    raise AssertionError(f"the error names {named} but not both of their shapes {[mismatched[k] for k in named]}: {message!r}")


@pytest.fixture(scope="module")
def small_reference() -> ref.PointTransformer:
    return _reference(SMALL)


@pytest.fixture(scope="module")
def small_clouds() -> dict[str, torch.Tensor]:
    return _clouds(SMALL_POINTS, seed=7)


@pytest.fixture(scope="module")
def small_expected(small_reference, small_clouds) -> dict[str, torch.Tensor]:
    return {name: _logits(small_reference, pts) for name, pts in small_clouds.items()}


# --------------------------------------------------------------------------- the oracle itself


def test_reference_fps_follows_published_kernel_rules():
    # p0 first; p2/p3 tie at distance 4 -> lowest index 2; then everything left is at 0
    # except p1, which is within the 1e-3 ball and therefore never chosen.
    pts = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 0.02], [-1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]])
    assert ref.furthest_point_sample(pts, 3).tolist() == [[0, 2, 0]]
    assert ref.furthest_point_sample(pts, 3, skip_near_origin=False).tolist() == [[0, 2, 1]]
    # point 0 inside the ball is still the first pick
    pts = torch.tensor([[[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, -2.0, 0.0], [0.01, 0.0, 0.0]]])
    assert ref.furthest_point_sample(pts, 3).tolist() == [[0, 2, 1]]


def test_reference_names_are_the_published_ones(small_reference):
    names = set(small_reference.state_dict())
    for key in (
        "cls_token",
        "cls_pos",
        "encoder.first_conv.0.weight",
        "encoder.first_conv.1.running_var",
        "encoder.second_conv.3.weight",
        "pos_embed.0.weight",
        "pos_embed.2.bias",
        "blocks.blocks.1.attn.qkv.weight",
        "blocks.blocks.1.attn.proj.bias",
        "blocks.blocks.1.mlp.fc1.weight",
        "blocks.blocks.1.norm2.bias",
        "norm.weight",
        "cls_head_finetune.0.weight",
        "cls_head_finetune.1.running_mean",
        "cls_head_finetune.8.bias",
    ):
        assert key in names
    assert "blocks.blocks.0.attn.qkv.bias" not in names  # qkv has no bias


def test_special_clouds_exercise_the_skip_rule_and_tolerance_discriminates(small_reference, small_clouds):
    """Guard: on the special clouds the published FPS differs from textbook FPS, and
    the difference moves the logits far beyond the comparison tolerance."""
    pts = small_clouds["dup_and_origin"]
    published = ref.furthest_point_sample(pts, SMALL["num_group"])
    textbook = ref.furthest_point_sample(pts, SMALL["num_group"], skip_near_origin=False)
    sqnorm = (pts**2).sum(-1)
    for b in range(pts.shape[0]):
        assert published[b, 0] == 0 and textbook[b, 0] == 0
        assert not (sqnorm[b, published[b, 1:]] <= 1e-3).any(), "published FPS never picks one after index 0"
    assert (sqnorm[0, textbook[0, 1:]] <= 1e-3).any(), "textbook FPS should pick a near-origin point"
    assert sqnorm[1, 0] == 0.0  # cloud 1 starts at the origin
    textbook_model = copy.deepcopy(small_reference)
    textbook_model.group_divider.skip_near_origin = False
    gap = (_logits(small_reference, pts) - _logits(textbook_model, pts)).abs().max()
    assert gap > 100 * ATOL


def test_parameter_count_matches_published_scanobjectnn_model():
    expected = 22_093_327  # Point-MAE PointTransformer, ScanObjectNN config, K = 15
    reference = ref.PointTransformer(ref.make_config(cls_dim=15))
    assert sum(p.numel() for p in reference.parameters()) == expected
    ours = FullFinetuneClassifier(BackboneConfig(), 15)
    assert sum(p.numel() for p in ours.parameters()) == expected


# --------------------------------------------------------------------------- fine-tuned checkpoint -> same logits


def test_our_names_and_shapes_equal_the_published_ones(small_reference):
    ours = _ours_classifier(SMALL)
    theirs = {k: tuple(v.shape) for k, v in small_reference.state_dict().items()}
    mine = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert mine == theirs


def test_published_finetuned_checkpoint_gives_published_logits(tmp_path, small_reference, small_clouds, small_expected):
    path = ref.save_published_finetune_checkpoint(small_reference, tmp_path / "ckpt-best.pth")
    ours = _ours_classifier(SMALL)
    report = load_checkpoint(ours, path)
    assert list(report.missing) == []
    assert list(report.unexpected) == []
    theirs = small_reference.state_dict()
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(value, theirs[key], rtol=0, atol=0, msg=f"{key} not loaded verbatim")
    for name, pts in small_clouds.items():
        got = _logits(ours, pts)
        assert got.shape == (pts.shape[0], NUM_CLASSES)
        torch.testing.assert_close(got, small_expected[name], atol=ATOL, rtol=RTOL, msg=f"cloud set {name!r}")


def test_eval_logits_do_not_depend_on_the_batch(tmp_path, small_reference, small_clouds, small_expected):
    ours = _ours_classifier(SMALL)
    load_checkpoint(ours, ref.save_published_finetune_checkpoint(small_reference, tmp_path / "c.pth"))
    pts = small_clouds["dup_and_origin"]
    for b in range(pts.shape[0]):
        torch.testing.assert_close(_logits(ours, pts[b : b + 1])[0], small_expected["dup_and_origin"][b], atol=ATOL, rtol=RTOL)


def test_published_finetuned_checkpoint_at_moderate_size(tmp_path):
    reference = _reference(MODERATE, num_classes=15, seed=3)
    clouds = _clouds(MODERATE_POINTS, seed=11)
    path = ref.save_published_finetune_checkpoint(reference, tmp_path / "moderate.pth")
    ours = _ours_classifier(MODERATE, num_classes=15)
    report = load_checkpoint(ours, path)
    assert list(report.missing) == [] and list(report.unexpected) == []
    for name in ("gaussian", "dup_and_origin"):
        pts = clouds[name]
        torch.testing.assert_close(_logits(ours, pts), _logits(reference, pts), atol=ATOL, rtol=RTOL, msg=f"cloud set {name!r}")


def test_finetuned_checkpoint_into_backbone_reports_head_unexpected(tmp_path, small_reference, small_clouds):
    path = ref.save_published_finetune_checkpoint(small_reference, tmp_path / "ft.pth")
    backbone = _ours_backbone(SMALL)
    report = load_checkpoint(backbone, path)
    assert list(report.missing) == []
    head = {k for k in small_reference.state_dict() if k.startswith(ref.HEAD_PREFIX)}
    assert _strip_module(report.unexpected) == head
    # the backbone computes the published classification feature (before the head)
    pts = small_clouds["gaussian"]
    with torch.no_grad():
        out = backbone.eval()(pts)
        expected = small_reference.features(pts)
    if out.dim() == 3:  # normalised tokens, cls first
        out = torch.cat([out[:, 0], out[:, 1:].max(dim=1).values], dim=-1)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=RTOL)


def _loaded_small_pair(tmp_path, reference):
    ours = _ours_classifier(SMALL)
    report = load_checkpoint(ours, ref.save_published_finetune_checkpoint(reference, tmp_path / "pair.pth"))
    assert list(report.missing) == [] and list(report.unexpected) == []
    return ours


def _grid_clouds(n: int, count: int, seed: int) -> torch.Tensor:
    """Random subsets of a 7x7x7 grid with spacing 0.25 (dyadic: every squared distance is
    exact), in shuffled order: FPS and kNN meet many exact ties between distinct points,
    and the grid's origin point is inside the skipped ball."""
    g = torch.Generator().manual_seed(seed)
    axis = torch.arange(-3, 4, dtype=torch.float32) * 0.25
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    return torch.stack([grid[torch.randperm(grid.shape[0], generator=g)[:n]] for _ in range(count)])


def test_exact_ties_resolve_like_the_published_kernels(tmp_path, small_reference):
    """pointnet2_ops FPS (strict >, one thread per point for N <= 512) and KNN_CUDA
    (insertion sort, strict <) both let the lowest index win an exact tie; at the k-th
    neighbour that decides which of several equidistant points joins the patch."""
    pts = _grid_clouds(SMALL_POINTS, count=4, seed=0)
    ours = _loaded_small_pair(tmp_path, small_reference)
    torch.testing.assert_close(_logits(ours, pts), _logits(small_reference, pts), atol=ATOL, rtol=RTOL)


# float32 point whose float32 squared norm x*x + y*y + z*z is exactly float32(1e-3)
# = 0.0010000000474974513, i.e. just ABOVE the double 1e-3 the kernel compares against.
_ON_THRESHOLD = (0.005066416691988707, -0.025871509686112404, 0.01746414788067341)


def test_fps_skip_threshold_compares_like_the_published_kernel(tmp_path, small_reference):
    """The kernel tests `mag <= 1e-3` with a float mag promoted to double, so a point
    whose float32 squared norm is float32(1e-3) > 1e-3 is NOT skipped."""
    g = torch.Generator().manual_seed(21)
    n = SMALL_POINTS
    angle = torch.rand(n, generator=g) * (2 * torch.pi)
    radius = 0.9 + 0.1 * torch.rand(n, generator=g)
    pts = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle), 0.2 * torch.rand(n, generator=g) - 0.1], 1)
    pts[50:56] = torch.randn(6, 3, generator=g) * 0.005  # inside the skipped ball
    pts[100] = torch.tensor(_ON_THRESHOLD, dtype=torch.float32)
    pts = pts[None].contiguous()
    x, y, z = (pts[0, 100, i] for i in range(3))
    assert float(x * x + y * y + z * z) == float(torch.tensor(1e-3, dtype=torch.float32)) > 1e-3
    centres = ref.furthest_point_sample(pts, SMALL["num_group"])[0].tolist()
    assert 100 in centres and not set(range(50, 56)) & set(centres)  # guard: the case bites
    ours = _loaded_small_pair(tmp_path, small_reference)
    torch.testing.assert_close(_logits(ours, pts), _logits(small_reference, pts), atol=ATOL, rtol=RTOL)


# --------------------------------------------------------------------------- pre-train layout


@pytest.mark.parametrize("prefix", ["module.", ""], ids=["dataparallel", "plain"])
def test_pretrain_checkpoint_into_backbone(tmp_path, prefix):
    pretrain = ref.randomize_(ref.PointMAEPretrain(ref.make_config(**SMALL), decoder_depth=2), seed=5)
    path = ref.save_published_pretrain_checkpoint(pretrain, tmp_path / "pretrain.pth", prefix=prefix)

    # what the published loader makes of this file, on the published fine-tune model
    published = ref.published_style_load(ref.PointTransformer(ref.make_config(**SMALL, cls_dim=NUM_CLASSES)), path)
    published_unexpected = set(published.unexpected_keys)
    assert published_unexpected and all(
        k == "mask_token" or k.split(".")[0] in {"MAE_decoder", "decoder_pos_embed", "increase_dim"}
        for k in published_unexpected
    )

    backbone = _ours_backbone(SMALL)
    report = load_checkpoint(backbone, path)
    # a Point-MAE pre-train file has no cls token / cls pos (MaskTransformer has none):
    # they are the only backbone tensors it cannot provide.
    assert set(report.missing) == set(ref.PRETRAIN_ABSENT_KEYS)
    assert _strip_module(report.unexpected) == published_unexpected
    source = pretrain.MAE_encoder.state_dict()
    mine = backbone.state_dict()
    assert set(mine) - set(source) == set(ref.PRETRAIN_ABSENT_KEYS)
    for key, value in source.items():
        torch.testing.assert_close(mine[key], value, rtol=0, atol=0, msg=f"{key} not loaded verbatim")


def test_pretrain_checkpoint_into_classifier_reports_head_missing(tmp_path):
    pretrain = ref.randomize_(ref.PointMAEPretrain(ref.make_config(**SMALL), decoder_depth=2), seed=5)
    path = ref.save_published_pretrain_checkpoint(pretrain, tmp_path / "pretrain.pth")
    published = ref.published_style_load(ref.PointTransformer(ref.make_config(**SMALL, cls_dim=NUM_CLASSES)), path)
    ours = _ours_classifier(SMALL)
    report = load_checkpoint(ours, path)
    assert set(report.missing) == set(published.missing_keys)
    assert {k for k in report.missing if not k.startswith(ref.HEAD_PREFIX)} == set(ref.PRETRAIN_ABSENT_KEYS)
    assert any(k.startswith(ref.HEAD_PREFIX) for k in report.missing)
    assert _strip_module(report.unexpected) == set(published.unexpected_keys)


# --------------------------------------------------------------------------- other layouts and prefixes


def _layout(state: dict, variant: str) -> dict:
    wrap = {
        "base_model/module.": lambda s: {"base_model": {"module." + k: v for k, v in s.items()}, "epoch": 3},
        "base_model/plain": lambda s: {"base_model": dict(s), "epoch": 3},
        "base_model/base_model.": lambda s: {"base_model": {"base_model." + k: v for k, v in s.items()}},
        "base_model/module.base_model.": lambda s: {"base_model": {"module.base_model." + k: v for k, v in s.items()}},
        "base_model/module.transformer_q.": lambda s: {"base_model": {"module.transformer_q." + k: v for k, v in s.items()}},
        "base_model/transformer_q.": lambda s: {"base_model": {"transformer_q." + k: v for k, v in s.items()}},
        "model/plain": lambda s: {"model": dict(s), "epoch": 3},
        "model/module.": lambda s: {"model": {"module." + k: v for k, v in s.items()}},
        "bare": lambda s: dict(s),
        "bare/module.": lambda s: {"module." + k: v for k, v in s.items()},
    }
    return wrap[variant](state)


@pytest.mark.parametrize(
    "variant",
    [
        "base_model/module.",
        "base_model/plain",
        "base_model/base_model.",
        "base_model/module.base_model.",
        "base_model/module.transformer_q.",
        "base_model/transformer_q.",
        "model/plain",
        "model/module.",
        "bare",
        "bare/module.",
    ],
)
def test_checkpoint_layouts_all_load(tmp_path, variant, small_reference, small_clouds, small_expected):
    state = {k: v.detach().clone() for k, v in small_reference.state_dict().items()}
    path = tmp_path / "variant.pth"
    torch.save(_layout(state, variant), path)
    ours = _ours_classifier(SMALL)
    report = load_checkpoint(ours, path)
    assert list(report.missing) == [], variant
    assert list(report.unexpected) == [], variant
    pts = small_clouds["gaussian"]
    torch.testing.assert_close(_logits(ours, pts), small_expected["gaussian"], atol=ATOL, rtol=RTOL)


# --------------------------------------------------------------------------- refusals

_SIDE_EFFECTS: list[str] = []


def _record_side_effect(tag: str) -> str:
    _SIDE_EFFECTS.append(tag)
    return tag


class _RunsCodeWhenUnpickled:
    """Unpickling this calls a function: exactly what weights_only loading must refuse."""

    def __reduce__(self):
        return (_record_side_effect, ("unpickled",))


def test_checkpoint_needing_arbitrary_pickle_is_refused(tmp_path, small_reference):
    ckpt = ref.published_finetune_checkpoint(small_reference)
    ckpt["args"] = _RunsCodeWhenUnpickled()
    path = tmp_path / "pickled.pth"
    torch.save(ckpt, path)

    # the trap is armed: an unrestricted torch.load would run our function
    _SIDE_EFFECTS.clear()
    torch.load(path, map_location="cpu", weights_only=False)
    assert _SIDE_EFFECTS == ["unpickled"]
    _SIDE_EFFECTS.clear()

    ours = _ours_classifier(SMALL)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(ours, path)
    assert isinstance(info.value, ValueError)
    assert re.search(r"pickle|weights_only", str(info.value), re.IGNORECASE), str(info.value)
    assert _SIDE_EFFECTS == [], "load_checkpoint executed code from the checkpoint"
    for key, value in ours.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed by a refused load"


def test_shape_mismatch_in_head_names_key_and_shapes(tmp_path):
    reference = _reference(SMALL, num_classes=NUM_CLASSES + 4, seed=2)  # e.g. a 15-class file into an 11-class model
    path = ref.save_published_finetune_checkpoint(reference, tmp_path / "other-classes.pth")
    ours = _ours_classifier(SMALL)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(ours, path)
    assert isinstance(info.value, ValueError)
    mismatched = {
        "cls_head_finetune.8.weight": ((NUM_CLASSES + 4, 256), (NUM_CLASSES, 256)),
        "cls_head_finetune.8.bias": ((NUM_CLASSES + 4,), (NUM_CLASSES,)),
    }
    _assert_names_a_mismatch(str(info.value), mismatched)


def test_shape_mismatch_from_other_width_names_key_and_shapes(tmp_path):
    wider = dict(SMALL, trans_dim=96, encoder_dims=96)
    reference = _reference(wider, seed=4)
    path = ref.save_published_finetune_checkpoint(reference, tmp_path / "wider.pth")
    ours = _ours_classifier(SMALL)
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    mine = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    mismatched = {k: (theirs[k], mine[k]) for k in mine if k in theirs and theirs[k] != mine[k]}
    assert "cls_token" in mismatched and "blocks.blocks.0.attn.qkv.weight" in mismatched
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(ours, path)
    _assert_names_a_mismatch(str(info.value), mismatched)
