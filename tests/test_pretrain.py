"""Point-MAE pre-training: loss, masking, the loop, the checkpoint layout, the weights cache, the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import published_reference as ref  # noqa: E402

from pointpeft_ray.engine import build  # noqa: E402
from pointpeft_ray.engine.config import TrainConfig  # noqa: E402
from pointpeft_ray.engine.loop import TrainingDivergedError  # noqa: E402
from pointpeft_ray.errors import ConfigError  # noqa: E402
from pointpeft_ray.file_names import RUN_STATE_FILE  # noqa: E402
from pointpeft_ray.models import BackboneConfig, FullFinetuneClassifier, PointMAEBackbone, load_checkpoint  # noqa: E402
from pointpeft_ray.pretrain import (  # noqa: E402
    PointMAEPretrainModel,
    PretrainConfig,
    PretrainResult,
    chamfer_directions,
    chamfer_l2,
    ensure_pretrained,
    pretrain,
    random_patch_mask,
    weights_key,
    write_pretrain_checkpoint,
)
from pointpeft_ray.pretrain.cache import read_manifest  # noqa: E402
from pointpeft_ray.pretrain.mae import take_patches  # noqa: E402
from tests.conftest import logged  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY_DATA = {"samples_per_class": 4, "points": 256}  # 60 training clouds
PRETRAIN_ABSENT = set(ref.PRETRAIN_ABSENT_KEYS)  # cls_token, cls_pos


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine
    two spinning threads make each step ~20x slower: run this file single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("data-cache")


def tiny_config(data_cache, **changes) -> PretrainConfig:
    raw = {
        "model": {"preset": "tiny"},
        "data": {"task": "synth/clean", "options": TINY_DATA, "cache_dir": str(data_cache)},
        "optim": {"epochs": 4, "warmup_epochs": 0, "batch_size": 16},
        "device": "cpu",
    }
    for key, value in changes.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and key in raw else value
    return PretrainConfig.from_dict(raw)


def tiny_shape(config: PretrainConfig) -> dict:
    b = config.model.backbone
    return dict(trans_dim=b.trans_dim, depth=b.depth, num_heads=b.num_heads, num_group=b.num_group,
                group_size=b.group_size, encoder_dims=b.encoder_dims, drop_path_rate=b.drop_path_rate)


# --------------------------------------------------------------------------- Chamfer-L2


def brute_force_chamfer(pred: torch.Tensor, true: torch.Tensor) -> tuple[list, list]:
    """Per patch: every point's squared distance to its nearest point in the other set, by loops."""
    to_true, to_pred = [], []
    for p, t in zip(pred.tolist(), true.tolist()):
        def nearest(a, others):
            return min(sum((x - y) ** 2 for x, y in zip(a, b)) for b in others)
        to_true.append([nearest(a, t) for a in p])
        to_pred.append([nearest(b, p) for b in t])
    return to_true, to_pred


def test_chamfer_matches_a_brute_force_loop():
    gen = torch.Generator().manual_seed(0)
    pred, true = torch.randn(4, 5, 3, generator=gen), torch.randn(4, 7, 3, generator=gen)  # N1 != N2
    to_true, to_pred = chamfer_directions(pred, true)
    expected_to_true, expected_to_pred = brute_force_chamfer(pred, true)
    torch.testing.assert_close(to_true, torch.tensor(expected_to_true), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(to_pred, torch.tensor(expected_to_pred), rtol=1e-5, atol=1e-6)
    mean = lambda rows: sum(map(sum, rows)) / sum(map(len, rows))  # noqa: E731
    assert chamfer_l2(pred, true).item() == pytest.approx(mean(expected_to_true) + mean(expected_to_pred), rel=1e-5)


def test_chamfer_needs_both_directions():
    true = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]])
    collapsed = true[:, :1].expand(1, 4, 3)  # every prediction on one true point
    to_true, to_pred = chamfer_directions(collapsed, true)
    assert to_true.sum() == 0 and to_pred.mean() == pytest.approx(0.75)  # only true->pred sees the collapse
    assert chamfer_l2(collapsed, true).item() == pytest.approx(0.75)
    assert chamfer_l2(true[:, torch.tensor([2, 0, 3, 1])], true).item() == 0.0  # order does not matter


# --------------------------------------------------------------------------- masking and the model


def test_mask_counts_are_exact_and_differ_per_sample():
    torch.manual_seed(0)
    mask = random_patch_mask(batch=8, num_group=64, num_masked=38, device=torch.device("cpu"))
    assert mask.visible.shape == (8, 26) and mask.masked.shape == (8, 38)
    for visible, masked in zip(mask.visible, mask.masked):
        assert sorted(visible.tolist() + masked.tolist()) == list(range(64))
        assert visible.tolist() == sorted(visible.tolist()) and masked.tolist() == sorted(masked.tolist())
    assert len({tuple(row.tolist()) for row in mask.masked}) == 8


def test_encoder_sees_only_visible_patches_and_targets_are_the_masked_ones(data_cache):
    config = tiny_config(data_cache)  # tiny: 16 groups of 8, 60% -> 9 masked
    torch.manual_seed(0)
    model = PointMAEPretrainModel(config.model.backbone, config.mae)
    seen = []
    model.MAE_encoder.blocks.register_forward_hook(lambda module, args, out: seen.append(tuple(out.shape)))
    points = torch.rand(3, 256, 3)
    out = model.reconstruct(points)
    assert seen == [(3, 7, 64)]
    assert out.predicted.shape == out.target.shape == (3, 9, 8, 3)
    neighbourhoods, _ = model.MAE_encoder.group(points)
    torch.testing.assert_close(out.target, take_patches(neighbourhoods, out.mask.masked))
    assert not hasattr(model.MAE_encoder, "cls_token")  # MaskTransformer has none


def test_state_dict_is_the_published_pretrain_layout(data_cache):
    config = tiny_config(data_cache)
    ours = PointMAEPretrainModel(config.model.backbone, config.mae).state_dict()
    theirs = ref.PointMAEPretrain(ref.make_config(**tiny_shape(config)), decoder_depth=4).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


# --------------------------------------------------------------------------- the loop


def test_loss_falls_and_an_interrupted_run_resumes_to_the_same_history(data_cache, tmp_path):
    config = tiny_config(data_cache)
    straight = pretrain(config)
    losses = [m["train_loss"] for m in straight.history]
    assert len(losses) == 4 and losses[-1] < 0.5 * losses[0], losses
    assert all(m["train_samples_per_second"] > 0 and m["lr"] > 0 for m in straight.history)

    class Stop(Exception):
        pass

    def stop_after_two(metrics):
        if metrics["epoch"] == 2:
            raise Stop

    resumable = config.replace(run_dir=str(tmp_path / "run"))
    with pytest.raises(Stop):
        pretrain(resumable, report=stop_after_two)
    with logged() as lines:
        resumed = pretrain(resumable)
    assert "[resume] pre-training from epoch 2" in lines[0]
    assert [m["train_loss"] for m in resumed.history] == pytest.approx(losses, rel=1e-6)
    assert resumed.checkpoint == tmp_path / "run" / "pretrain.pth" and resumed.checkpoint.is_file()


def test_nan_loss_names_epoch_and_step(data_cache, monkeypatch):
    monkeypatch.setattr(PointMAEPretrainModel, "forward",
                        lambda self, points: torch.full((), float("nan"), requires_grad=True))
    with pytest.raises(TrainingDivergedError, match="epoch 1, step 1"):
        pretrain(tiny_config(data_cache))


# --------------------------------------------------------------------------- the checkpoint


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, data_cache):
    """One epoch of tiny pre-training, written in the published layout."""
    path = tmp_path_factory.mktemp("pretrained") / "pretrain.pth"
    config = tiny_config(data_cache, optim={"epochs": 1}, output=str(path))
    before = torch.get_num_threads()  # module-scoped: set up before the autouse one_thread
    torch.set_num_threads(1)
    try:
        return config, pretrain(config)
    finally:
        torch.set_num_threads(before)


def test_checkpoint_has_the_published_keys_and_nothing_left_behind(pretrained):
    config, result = pretrained
    saved = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    assert set(saved) == {"base_model", "epoch"} and saved["epoch"] == 1
    keys = set(saved["base_model"])
    for key in ("MAE_encoder.encoder.first_conv.0.weight", "MAE_encoder.pos_embed.0.weight",
                "MAE_encoder.blocks.blocks.0.attn.qkv.weight", "MAE_encoder.norm.weight", "mask_token",
                "decoder_pos_embed.0.weight", "MAE_decoder.blocks.3.mlp.fc2.bias", "MAE_decoder.norm.weight",
                "increase_dim.0.weight"):
        assert key in keys, key
    reference = ref.PointMAEPretrain(ref.make_config(**tiny_shape(config)), decoder_depth=4)
    assert keys == set(reference.state_dict())
    assert os.listdir(result.checkpoint.parent) == ["pretrain.pth"]  # no temporary left


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "pretrain.pth"
    write_pretrain_checkpoint({"MAE_encoder.norm.weight": torch.ones(3)}, path, epoch=1)

    def crash(obj, target):
        Path(target).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        write_pretrain_checkpoint({"MAE_encoder.norm.weight": torch.zeros(3)}, path, epoch=2)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["pretrain.pth"]
    assert torch.load(path, weights_only=True)["epoch"] == 1


def test_checkpoint_loads_into_our_backbone_and_classifier(pretrained):
    config, result = pretrained
    backbone_config = config.model.backbone
    backbone = PointMAEBackbone(backbone_config)
    report = load_checkpoint(backbone, result.checkpoint)
    assert set(report.missing) == PRETRAIN_ABSENT and report.unknown == []
    assert report.pretrain_heads and all(k == "mask_token" or k.split(".")[0] in
                                         {"MAE_decoder", "decoder_pos_embed", "increase_dim"}
                                         for k in report.pretrain_heads)
    assert "ignored pre-training heads" in str(report) and "unexpected" not in str(report)
    saved = torch.load(result.checkpoint, weights_only=True)["base_model"]
    for key, value in backbone.state_dict().items():
        if key not in PRETRAIN_ABSENT:
            torch.testing.assert_close(value, saved["MAE_encoder." + key], rtol=0, atol=0)
    classifier = FullFinetuneClassifier(backbone_config, num_classes=15)
    report = load_checkpoint(classifier, result.checkpoint)
    assert {k for k in report.missing if not k.startswith("cls_head_finetune.")} == PRETRAIN_ABSENT
    assert report.unknown == []


def test_loader_still_reports_truly_unknown_keys(tmp_path, pretrained):
    _, result = pretrained
    state = torch.load(result.checkpoint, weights_only=True)
    state["base_model"]["some_other_head.weight"] = torch.ones(2)
    path = tmp_path / "extra.pth"
    torch.save(state, path)
    report = load_checkpoint(PointMAEBackbone(pretrained[0].model.backbone), path)
    assert report.unknown == ["some_other_head.weight"]
    assert "unexpected (1): some_other_head.weight" in str(report)


def test_published_reference_reads_our_checkpoint_and_means_the_same(pretrained):
    config, result = pretrained
    shape = tiny_shape(config)
    theirs = ref.PointTransformer(ref.make_config(**shape, cls_dim=15))
    loaded = ref.published_style_load(theirs, result.checkpoint)
    assert {k for k in loaded.missing_keys if not k.startswith(ref.HEAD_PREFIX)} == PRETRAIN_ABSENT
    assert any(k.startswith(ref.HEAD_PREFIX) for k in loaded.missing_keys)
    assert all(k == "mask_token" or k.split(".")[0] in {"MAE_decoder", "decoder_pos_embed", "increase_dim"}
               for k in loaded.unexpected_keys)
    ours = PointMAEBackbone(BackboneConfig(**shape))
    load_checkpoint(ours, result.checkpoint)
    with torch.no_grad():  # the fresh cls token / position are the only free tensors: share them
        ours.cls_token.copy_(theirs.cls_token)
        ours.cls_pos.copy_(theirs.cls_pos)
        points = torch.rand(2, 256, 3, generator=torch.Generator().manual_seed(3)) * 2 - 1
        torch.testing.assert_close(ours.classification_feature(ours.eval()(points)),
                                   theirs.eval().features(points), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["peft", "full"])
def test_fine_tune_config_builds_from_our_checkpoint(pretrained, mode):
    _, result = pretrained
    config = TrainConfig.from_dict({"mode": mode, "model": {"preset": "tiny", "checkpoint": str(result.checkpoint)}})
    with logged() as lines:
        model = build.build_model(config, num_classes=15)
    assert model is not None and "ignored pre-training heads" in lines[0] and "unexpected" not in lines[0]


# --------------------------------------------------------------------------- the weights cache


def test_cache_pretrains_once_then_returns_the_same_file(data_cache, tmp_path):
    runs = []

    def counting_runner(config):
        runs.append(config)
        return pretrain(config)

    config = tiny_config(data_cache, optim={"epochs": 1}, data={"cache_dir": str(tmp_path / "cache")})
    first = ensure_pretrained(config, runner=counting_runner)
    assert first == tmp_path / "cache" / "pretrained" / weights_key(config) / "pretrain.pth"
    manifest = read_manifest(first)
    assert manifest["epochs"] == 1 and manifest["final_loss"] > 0 and manifest["wall_seconds"] > 0
    assert manifest["config"] == config.model_dump() and not (first.parent / "run").exists()
    mtime = first.stat().st_mtime_ns
    # Where the run is kept, its output or its device do not change the weights: same entry.
    same = config.replace(run_dir=str(tmp_path / "elsewhere"), output=str(tmp_path / "x.pth"), device="cpu")
    again = ensure_pretrained(same, runner=counting_runner)
    assert again == first and len(runs) == 1
    assert first.stat().st_mtime_ns == mtime and read_manifest(first) == manifest
    other = config.replace(mae=config.mae.replace(mask_ratio=0.5).model_dump())
    assert weights_key(other) != weights_key(config)


def test_concurrent_callers_pretrain_once(data_cache, tmp_path):
    runs = []

    def slow_fake_runner(config):
        runs.append(config)
        model = PointMAEPretrainModel(config.model.backbone, config.mae)
        threading.Event().wait(0.3)  # hold the lock while the other caller arrives
        path = write_pretrain_checkpoint(model.state_dict(), config.output_path(), epoch=1)
        return PretrainResult(history=[{"train_loss": 0.5}], final_loss=0.5, epochs=1, checkpoint=path)

    config = tiny_config(data_cache, data={"cache_dir": str(tmp_path / "cache")})
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(ensure_pretrained(config, slow_fake_runner)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(runs) == 1 and len(paths) == 2 and paths[0] == paths[1] and paths[0].is_file()


# --------------------------------------------------------------------------- config errors


def test_config_errors_name_the_field(data_cache):
    with pytest.raises(ConfigError, match=r"mask_ration.*did you mean 'mask_ratio'"):
        PretrainConfig.from_dict({"mae": {"mask_ration": 0.5}})
    with pytest.raises(ConfigError, match=r"mae\b.*mask_ratio.*less than 1 \(got 1\.5\)"):
        PretrainConfig.from_dict({"mae": {"mask_ratio": 1.5}})
    with pytest.raises(ConfigError, match=r"mae\.mask_ratio 0\.05 masks 0 of 16 patches"):
        PretrainConfig.from_dict({"model": {"preset": "tiny"}, "mae": {"mask_ratio": 0.05}})
    with pytest.raises(ConfigError, match=r"optim\b.*'epoch' \(did you mean 'epochs'"):
        PretrainConfig.from_dict({"optim": {"epoch": 3}})
    with pytest.raises(ConfigError, match=r"mae\.decoder_num_heads \(5\) must divide trans_dim \(64\)"):
        PretrainConfig.from_dict({"model": {"preset": "tiny"}, "mae": {"decoder_num_heads": 5}})


def test_shipped_configs_validate():
    small = PretrainConfig.from_yaml(REPO / "configs" / "pretrain_synth_small.yaml")
    assert small.model.preset == "small" and small.data.task == "synth/clean"
    published = PretrainConfig.from_yaml(REPO / "configs" / "pretrain_shapenet55.yaml")
    backbone = published.model.backbone
    assert (backbone.trans_dim, backbone.depth, backbone.num_group, backbone.group_size) == (384, 12, 64, 32)
    assert (published.optim.lr, published.optim.batch_size, published.optim.epochs) == (1e-3, 128, 300)
    assert published.mae.mask_ratio == 0.6 and published.data.task == "shapenet55"


# --------------------------------------------------------------------------- CLI and the Ray runner's wiring


def run_cli(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # see one_thread
    return subprocess.run([sys.executable, "-m", "pointpeft_ray.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env)


def test_cli_pretrains_in_process_and_writes_the_checkpoint(data_cache, tmp_path):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(json.dumps({"model": {"preset": "tiny"}, "device": "cpu",
                                       "data": {"options": TINY_DATA, "cache_dir": str(data_cache)},
                                       "optim": {"epochs": 5, "warmup_epochs": 0, "batch_size": 16}}))
    out, summary = tmp_path / "weights" / "pretrain.pth", tmp_path / "summary.json"
    result = run_cli("pretrain", str(config_file), "--in-process", "--epochs", "1", "--output", str(out),
                     "--json", str(summary), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "[pretrain] epoch   1/1" in result.stdout and "pre-training done: final chamfer-l2" in result.stdout
    assert str(out) in result.stdout
    assert torch.load(out, weights_only=True)["epoch"] == 1
    payload = json.loads(summary.read_text())
    assert payload["epochs"] == 1 and payload["final_loss"] > 0 and len(payload["history"]) == 1
    assert (tmp_path / "runs" / "tiny" / "last").is_dir()  # in-process runs resume from runs/NAME

    config_file.write_text(json.dumps({"mae": {"mask_ratio": 2}}))
    bad = run_cli("pretrain", str(config_file), "--in-process", cwd=tmp_path)
    assert bad.returncode == 2 and "tiny.yaml" in bad.stderr and "mae: mask_ratio: Input should be less than 1" in bad.stderr


def test_ray_runner_is_wired(pretrained, tmp_path):
    """The Ray path without Ray: the worker entry point exists, and the driver turns a
    run-state checkpoint (what the workers report) into the Point-MAE file."""
    from contextlib import contextmanager

    from pointpeft_ray.cli import build_parser
    from pointpeft_ray.distributed import pretrain as ray_pretrain
    from pointpeft_ray.engine.context import save_state

    assert callable(ray_pretrain.fit_pretrain) and callable(ray_pretrain._pretrain_worker_loop)
    args = build_parser().parse_args(["pretrain", "x.yaml", "--workers", "2", "--gpu", "--address", "ray://h:1"])
    assert (args.workers, args.gpu, args.address, args.in_process) == (2, True, "ray://h:1", False)

    config, result = pretrained
    weights = torch.load(result.checkpoint, weights_only=True)["base_model"]
    save_state({"model": weights, "epochs_done": 1, "history": result.history, "optimizer": {}},
               tmp_path / "ckpt" / RUN_STATE_FILE)

    class FakeCheckpoint:
        @contextmanager
        def as_directory(self):
            yield str(tmp_path / "ckpt")

    summary = ray_pretrain._result_from_checkpoint(FakeCheckpoint(), tmp_path / "out" / "pretrain.pth")
    assert summary.epochs == 1 and summary.final_loss == result.final_loss
    report = load_checkpoint(PointMAEBackbone(config.model.backbone), summary.checkpoint)
    assert set(report.missing) == PRETRAIN_ABSENT and report.unknown == []
