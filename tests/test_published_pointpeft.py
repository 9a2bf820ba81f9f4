"""The released Point-PEFT files load into pointpeft-ray with the published logits.

The expected logits come from the independent oracle in ``published_reference.py``
(``PointTransformerBest`` + ``PublishedCacheQuery``), written from the published code
without importing this package; the files are written in the released layouts.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pointpeft_ray.cli import main as cli_main
from pointpeft_ray.errors import CheckpointError, MemoryBankError
from pointpeft_ray.models import (BackboneConfig, PointMAEBackbone, PointPEFTModel, load_checkpoint,
                                  load_published_pointpeft)
from pointpeft_ray.serving.adapter_bank import AdapterBank, write_points_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import published_reference as ref  # noqa: E402

SHAPE = dict(trans_dim=48, depth=4, num_heads=6, num_group=16, group_size=8, cls_dim=7, adapter_dim=8,
             query_num_group=8, query_group_size=8)
BACKBONE = BackboneConfig(trans_dim=48, depth=4, num_heads=6, num_group=16, group_size=8, encoder_dims=48)
PROMPTS, PROMPT_DEPTH, CLASSES = 5, 2, 7
# Tensors a Point-PEFT run never changes: in ckpt-best.pth they are the pre-trained ones.
FROZEN_SUFFIXES = ("attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight", "norm1.weight",
                   "norm2.weight")


def _clouds(batch: int, seed: int, n: int = 96) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, n, 3, generator=gen) * 2.0 - 1.0


def _special_clouds(seed: int) -> torch.Tensor:
    """Duplicated points and points within the FPS skip radius of the origin."""
    clouds = _clouds(3, seed)
    clouds[0, 10:20] = clouds[0, 3]  # ten copies of one point
    clouds[1, 5:9] = torch.tensor([[0.01, 0.0, 0.0], [0.0, -0.02, 0.0], [0.0, 0.0, 0.0], [0.015, 0.015, 0.0]])
    clouds[2, ::7] = clouds[2, 1::7]  # many duplicate pairs
    return clouds


def _share_frozen(model: ref.PointTransformerBest, query: ref.PublishedCacheQuery) -> None:
    """Make the fine-tuned model's frozen tensors the pre-trained ones, as in a real run."""
    pretrained = {k[len("MAE_encoder."):]: v for k, v in query.state_dict().items() if k.startswith("MAE_encoder.")}
    state = model.state_dict()
    with torch.no_grad():
        for key, value in pretrained.items():
            frozen = (key.startswith("pos_embed.") or (key.startswith("encoder.") and "running_" not in key
                                                       and "num_batches" not in key)
                      or key.endswith(FROZEN_SUFFIXES))
            if frozen and key in state:
                state[key].copy_(value)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """The three released files of a small published model, and its oracle."""
    folder = tmp_path_factory.mktemp("released")
    config = ref.make_pointpeft_config(**SHAPE)
    query = ref.randomize_pointpeft_(ref.PublishedCacheQuery(config, decoder_depth=2), seed=11).eval()
    bank = ref.build_published_bank(query, _clouds(12, seed=101), batch=5)
    model = ref.PointTransformerBest(config, bank, num_tokens=PROMPTS, prompt_depth=PROMPT_DEPTH)
    model = ref.randomize_pointpeft_(model, seed=1).eval()
    _share_frozen(model, query)
    files = {"ckpt": folder / "ckpt-best.pth", "pretrain": folder / "pretrain.pth", "bank": folder / "cache_shape.pt"}
    ref.save_published_pointpeft_checkpoint(model, files["ckpt"])
    ref.save_published_pretrain_checkpoint(query, files["pretrain"])
    ref.save_published_bank(bank, files["bank"])
    return {"model": model, "query": query, "files": files, "folder": folder}


def _load(files, **changes) -> PointPEFTModel:
    paths = {**files, **changes}
    return load_published_pointpeft(paths["ckpt"], paths["pretrain"], paths["bank"], num_classes=CLASSES,
                                    backbone=BACKBONE, prompt_depth=PROMPT_DEPTH, query_groups=8)


def _assert_close(ours: torch.Tensor, expected: torch.Tensor) -> None:
    relative = ((ours - expected).norm() / expected.norm()).item()
    assert relative <= 1e-4, f"relative error {relative:.2e}"


@pytest.mark.parametrize("clouds", ["random", "special"])
def test_released_files_give_the_published_logits(released, clouds):
    points = _clouds(3, seed=5) if clouds == "random" else _special_clouds(seed=6)
    expected = ref.published_logits(released["model"], released["query"], points)
    model = _load(released["files"])
    assert not model.training
    with torch.no_grad():
        _assert_close(model(points), expected)
    # the tolerance discriminates: without the published row offset the logits move
    fixed = _load(released["files"])
    fixed.peft_config = fixed.peft_config.replace(prompt_row_offset="per_sample")
    with torch.no_grad():
        assert ((fixed(points) - expected).norm() / expected.norm()).item() > 1e-3


def test_a_single_cloud_and_a_batch_of_five(released):
    model = _load(released["files"])
    for points in (_clouds(1, seed=8), _clouds(5, seed=9)):
        with torch.no_grad():
            _assert_close(model(points), ref.published_logits(released["model"], released["query"], points))


def test_the_published_model_has_the_published_switches_and_sizes(released):
    model = _load(released["files"])
    config = model.peft_config
    assert (config.prompt_length, config.top_k, config.prompt_depth, config.adapter_dim) == (5, 3, 2, 8)
    assert config.prompt_coordinates and config.frozen_batchnorm == "train" and not config.bank_normalize
    assert len(model.memory_bank) == 12 and model.memory_bank.cls_features is None


def test_convert_writes_an_adapter_that_from_adapter_the_adapter_bank_and_predict_use(released, tmp_path, capsys):
    files = released["files"]
    out, bank_dir = tmp_path / "adapter", tmp_path / "bank"
    argv = ["convert", "published-pointpeft", "--ckpt", str(files["ckpt"]), "--pretrain", str(files["pretrain"]),
            "--bank", str(files["bank"]), "--out", str(out), "--num-classes", str(CLASSES), "--num-group", "16",
            "--group-size", "8", "--query-groups", "8", "--prompt-depth", str(PROMPT_DEPTH),
            "--adapter-bank", str(bank_dir), "--name", "pb", "--task", "modelnet40/fewshot-7w10s-0"]  # 7 classes
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "memory bank of 12 rows" in printed and "pointpeft-ray predict --bank" in printed
    points = _clouds(3, seed=5)
    backbone = PointMAEBackbone(BACKBONE)
    load_checkpoint(backbone, files["pretrain"])
    loaded = PointPEFTModel.from_adapter(backbone, out).eval()
    with torch.no_grad():
        _assert_close(loaded(points), ref.published_logits(released["model"], released["query"], points))
    # predict evaluates as the published validate(): FPS of the task's point count first
    bank = AdapterBank.open(bank_dir)
    prediction = bank.predict("pb", points.numpy())
    expected = ref.published_logits(released["model"], released["query"], points, npoints=points.shape[1])
    assert torch.allclose(torch.from_numpy(prediction.probabilities), expected.softmax(-1), atol=1e-4)
    write_points_file(tmp_path / "clouds.npz", points.numpy(), labels=np.array([0, 1, 2]))
    assert cli_main(["predict", "--bank", str(bank_dir), "--task", "pb", str(tmp_path / "clouds.npz"), "--quiet"]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_other_checkpoints_are_refused_naming_the_file(released, tmp_path):
    files = released["files"]
    with pytest.raises(CheckpointError, match="pretrain.pth: not a published Point-PEFT checkpoint: no prompt_cor"):
        _load(files, ckpt=files["pretrain"])  # a pre-training checkpoint is not a Point-PEFT one
    plain = ref.randomize_(ref.PointTransformer(ref.make_config(**{k: SHAPE[k] for k in
                                                                 ("trans_dim", "depth", "num_heads", "num_group",
                                                                  "group_size", "cls_dim")})), seed=3)
    ref.save_published_finetune_checkpoint(plain, tmp_path / "finetune.pth")
    with pytest.raises(CheckpointError, match=r"finetune.pth: not a published Point-PEFT checkpoint.*plain Point-MAE"):
        _load(files, ckpt=tmp_path / "finetune.pth")
    with pytest.raises(CheckpointError, match="ckpt-best.pth: unexpected tensors for a Point-MAE pre-training "
                                              "checkpoint: prompt_cor"):
        _load(files, pretrain=files["ckpt"])  # the fine-tuned file where pretrain.pth belongs


def test_a_checkpoint_from_another_pretraining_is_refused(released, tmp_path):
    other = ref.randomize_pointpeft_(ref.PublishedCacheQuery(ref.make_pointpeft_config(**SHAPE), decoder_depth=2),
                                     seed=12)
    ref.save_published_pretrain_checkpoint(other, tmp_path / "other_pretrain.pth")
    with pytest.raises(CheckpointError, match="not fine-tuned from the given pretrain.pth"):
        _load(released["files"], pretrain=tmp_path / "other_pretrain.pth")


def test_bad_banks_and_truncated_files_are_refused(released, tmp_path):
    files = released["files"]
    torch.save(torch.randn(32, 12), tmp_path / "narrow.pt")
    with pytest.raises(MemoryBankError, match=r"narrow.pt: bank of shape \(32, 12\); expected 48 x N"):
        _load(files, bank=tmp_path / "narrow.pt")
    torch.save(torch.randn(12, 48), tmp_path / "transposed.pt")
    with pytest.raises(MemoryBankError, match="transposed.pt"):
        _load(files, bank=tmp_path / "transposed.pt")
    for name in ("ckpt", "bank"):
        data = files[name].read_bytes()
        cut = tmp_path / f"cut-{files[name].name}"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises((CheckpointError, MemoryBankError), match=cut.name):
            _load(files, **{name: cut})
    (tmp_path / "text.pt").write_text("not a checkpoint\n")
    with pytest.raises(MemoryBankError, match="text.pt"):
        _load(files, bank=tmp_path / "text.pt")
