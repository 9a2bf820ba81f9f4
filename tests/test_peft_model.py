import os

import pytest
import torch
import torch.nn.functional as F

from pointpeft_ray import CheckpointError, ConfigError, MemoryBankError, PointPEFTConfig, PointPEFTModel, get_peft_model
from pointpeft_ray.models import FullFinetuneClassifier, PointMAEBackbone
from pointpeft_ray.models.peft.model import BITFIT_SUFFIXES
from pointpeft_ray.models.presets import get_preset
from tests.conftest import random_clouds

TINY_PEFT = dict(prompt_depth=2, neighbours=4)


def tiny_backbone(tiny_config, seed=0):
    torch.manual_seed(seed)
    return PointMAEBackbone(tiny_config)


def train_batches(count=4, batch=6, points=160, seed=100):
    return [random_clouds(batch, points, seed + i) for i in range(count)]


def bank_model(tiny_config, tmp_path=None, **knobs):
    model = get_peft_model(tiny_backbone(tiny_config), PointPEFTConfig(**{**TINY_PEFT, **knobs}), 5)
    model.build_memory_bank(train_batches(), cache_dir=tmp_path, progress=False)
    return model


# ---- size and trainable set at the published size ---------------------------------

def test_published_size_counts_and_adapter_file(tmp_path):
    preset = get_preset("point_mae")
    model = get_peft_model(PointMAEBackbone(preset.backbone), PointPEFTConfig(), num_classes=15)
    trainable, total = model.get_nb_trainable_parameters()
    backbone_and_head = sum(p.numel() for p in model.backbone.parameters()) + sum(
        p.numel() for p in model.cls_head_finetune.parameters())
    assert abs(backbone_and_head - 22.1e6) / 22.1e6 < 0.01
    assert trainable <= 0.8e6
    assert "trainable params: 710,719" in model.print_trainable_parameters()
    model.save_adapter(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_weights.pt").stat().st_size <= 5 * 2**20


def test_trainable_set_is_what_spec_lists(tiny_config):
    model = get_peft_model(tiny_backbone(tiny_config), PointPEFTConfig(**TINY_PEFT), 5)
    for name, param in model.backbone.named_parameters():
        expected = (name in ("cls_token", "cls_pos", "norm.weight", "norm.bias")
                    or (name.startswith("blocks.blocks.") and name.endswith(BITFIT_SUFFIXES)))
        assert param.requires_grad == expected, name
    others = [n for n, p in model.named_parameters() if not n.startswith("backbone.")]
    assert all(p.requires_grad for n, p in model.named_parameters() if n in others)
    assert {n.split(".")[0] for n in others} == {"prompt", "neighbour_attention", "adapters", "cls_head_finetune"}
    no_bias = get_peft_model(tiny_backbone(tiny_config), PointPEFTConfig(**TINY_PEFT, train_bias=False), 5)
    assert not any(p.requires_grad for n, p in no_bias.backbone.named_parameters() if n.startswith("blocks."))


def test_frozen_batchnorm_stays_in_eval_mode(tiny_config):
    model = bank_model(tiny_config).train()
    encoder_bn = model.backbone.encoder.first_conv[1]
    assert not encoder_bn.training
    before = encoder_bn.running_mean.clone()
    model(random_clouds(6, 160, 100), sample_index=torch.arange(6))
    assert torch.equal(before, encoder_bn.running_mean)
    assert model.cls_head_finetune[1].training  # the head's BN trains


def test_one_step_changes_every_trained_tensor_and_no_frozen_one(tiny_config):
    model = bank_model(tiny_config).train()
    # Non-zero up-projections so every adapter tensor receives a gradient.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".up." in name:
                param.normal_(0, 0.02)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    points, labels = train_batches()[0], torch.tensor([0, 1, 2, 3, 4, 0])
    F.cross_entropy(model(points, sample_index=torch.arange(6)), labels).backward()
    got_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert got_grad == trainable
    optimizer.step()
    after = model.state_dict()
    head_bn_stats = {k for k in after if k.startswith(("cls_head_finetune.", "adapters.")) and "running" in k}
    for key, old in before.items():
        changed = not torch.equal(old, after[key])
        if key in trainable or key in head_bn_stats:
            assert changed, f"{key} did not change"
        elif "num_batches_tracked" not in key:
            assert not changed, f"frozen {key} changed"


# ---- every knob is alive --------------------------------------------------------------

EVAL_KNOBS = {
    "prompt_length": 8, "prompt_depth": 1, "prompt_init_std": 0.05, "prompt_adapter_width": 4,
    "memory_bank": False, "top_k": 4, "temperature": 0.1, "bank_size": 12, "bank_source": "cls",
    "bank_normalize": False, "geometry_adapter": False, "adapter_dim": 8, "mlp_adapter_scale": 0.2,
    "centre_scale": 0.9, "propagate_scale": 0.05, "num_subcentres": 4, "neighbours": 3,
    "neighbour_heads": 2, "neighbour_head_dim": 5, "pooling": "max_mean", "interp_neighbours": 1,
}
SUBSET_KNOBS = {"bank_sampling": "fps", "bank_seed": 7}  # only matter with a subsampled bank
TRAIN_KNOBS = {"prompt_dropout": 0.5, "exclude_self": False, "bank_query": "frozen_pass"}
TRAINABLE_SET_KNOBS = {"train_bias": False, "train_cls_token": False, "train_final_norm": False}


def _perturbed_logits(tiny_config, base, train=False, **knobs):
    torch.manual_seed(1)
    model = get_peft_model(tiny_backbone(tiny_config), PointPEFTConfig(**{**base, **knobs}), 5)
    with torch.no_grad():  # trained-looking weights: zero-initialised projections would hide knobs
        gen = torch.Generator().manual_seed(2)
        for name, param in model.named_parameters():
            if not name.startswith("backbone."):
                param.add_(torch.randn(param.shape, generator=gen) * 0.1)
    batches = train_batches()
    model.build_memory_bank(batches, progress=False)
    points = batches[1] + 0.01 * torch.randn(batches[1].shape, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(4)
    if train:
        return model.train()(points, sample_index=torch.arange(6, 12))
    with torch.no_grad():
        return model.eval()(points)


@pytest.mark.parametrize("knob", list(EVAL_KNOBS) + list(SUBSET_KNOBS) + list(TRAIN_KNOBS))
def test_every_knob_changes_the_output(tiny_config, knob):
    base = dict(TINY_PEFT, prompt_length=10, top_k=6, num_subcentres=8)
    if knob in SUBSET_KNOBS:
        base["bank_size"] = 12
    value = {**EVAL_KNOBS, **SUBSET_KNOBS, **TRAIN_KNOBS}[knob]
    train = knob in TRAIN_KNOBS
    ref = _perturbed_logits(tiny_config, base, train=train)
    changed = _perturbed_logits(tiny_config, base, train=train, **{knob: value})
    assert not torch.allclose(ref, changed, atol=1e-6), f"{knob}={value!r} did not change the output"


@pytest.mark.parametrize("knob", list(TRAINABLE_SET_KNOBS))
def test_trainable_set_knobs_change_what_trains(tiny_config, knob):
    base = PointPEFTConfig(**TINY_PEFT)
    a = get_peft_model(tiny_backbone(tiny_config), base, 5).get_nb_trainable_parameters()[0]
    b = get_peft_model(tiny_backbone(tiny_config), base.replace(**{knob: False}), 5).get_nb_trainable_parameters()[0]
    assert b < a


def test_config_defaults_are_published_and_combinations_checked(tiny_config):
    c = PointPEFTConfig()
    assert (c.prompt_length, c.prompt_depth, c.top_k, c.temperature, c.prompt_dropout) == (10, 6, 8, 1.0, 0.1)
    assert (c.adapter_dim, c.mlp_adapter_scale, c.centre_scale, c.propagate_scale, c.neighbours) == (16, 0.7, 0.3, 0.3, 16)
    with pytest.raises(ConfigError, match=r"top_k \(9\) must be <= prompt_length - 2 \(8\)"):
        PointPEFTConfig(top_k=9)
    with pytest.raises(ConfigError, match="larger than the usable bank"):
        PointPEFTConfig(top_k=8, bank_size=8)
    with pytest.raises(ConfigError, match=r"neighbours \(20\) must be <= num_subcentres \(10\)"):
        PointPEFTConfig(neighbours=20, num_subcentres=10)
    with pytest.raises(ConfigError, match="temperature"):
        PointPEFTConfig(temperature=0)
    with pytest.raises(ConfigError, match="did you mean 'top_k'"):
        PointPEFTConfig(topk=3)
    with pytest.raises(ConfigError, match=r"prompt_depth \(6\) > backbone depth \(3\)"):
        get_peft_model(tiny_backbone(tiny_config), PointPEFTConfig(), 5)
    with pytest.raises(ConfigError, match=r"neighbours \(16\) must be <= the sub-centre count \(8"):
        get_peft_model(tiny_backbone(tiny_config), PointPEFTConfig(prompt_depth=2), 5)


# ---- memory bank and retrieval --------------------------------------------------------

def test_retrieval_matches_a_brute_force_reference(tiny_config):
    from pointpeft_ray.models.peft.prompt import retrieve_prompt_source

    gen = torch.Generator().manual_seed(0)
    bank = torch.randn(30, 8, generator=gen)
    query = torch.randn(4, 8, generator=gen)
    excluded = torch.zeros(4, 30, dtype=torch.bool)
    excluded[0, 5] = True
    got = retrieve_prompt_source(query, bank, F.normalize(bank, dim=-1), 3, 0.5, True, excluded)
    assert got.shape == (4, 5, 8)
    for b in range(4):
        sims = [float(F.cosine_similarity(query[b], bank[r], dim=0)) for r in range(30)]
        if b == 0:
            sims[5] = float("-inf")
        top = sorted(range(30), key=lambda r: -sims[r])[:3]
        w = torch.softmax(torch.tensor([sims[r] for r in top]) / 0.5, dim=0)
        assert torch.allclose(got[b, 0], query[b])
        assert torch.allclose(got[b, 1], sum(w[i] * bank[r] for i, r in enumerate(top)), atol=1e-5)
        assert torch.allclose(got[b, 2:], bank[top])


def test_training_never_retrieves_self(tiny_config):
    from pointpeft_ray.models.peft import prompt as prompt_module

    model = bank_model(tiny_config).train()
    seen = {}
    original = prompt_module.retrieve_prompt_source

    def spy(query, bank, normed, top_k, temperature, normalize, excluded=None):
        seen["excluded"] = excluded
        seen["top"] = (F.normalize(query, dim=-1) @ normed.T).masked_fill(excluded, float("-inf")).topk(top_k).indices
        return original(query, bank, normed, top_k, temperature, normalize, excluded)

    import pointpeft_ray.models.peft.model as model_module
    model_module.retrieve_prompt_source = spy
    try:
        model(train_batches()[0], sample_index=torch.arange(6))
    finally:
        model_module.retrieve_prompt_source = original
    for row in range(6):
        assert row not in seen["top"][row].tolist()
        assert seen["excluded"][row, row]


def test_cached_query_equals_the_frozen_pass(tiny_config):
    model = bank_model(tiny_config)
    batches = train_batches()
    max_feat, cls_feat = model.frozen_global_features(batches[2])
    assert torch.allclose(model.bank_query_features[12:18], max_feat, atol=1e-5)
    assert torch.allclose(model.memory_bank.cls_features[12:18], cls_feat, atol=1e-5)


def test_frozen_features_ignore_tuned_biases(tiny_config):
    model = bank_model(tiny_config)
    points = train_batches()[0]
    before = model.frozen_global_features(points)[0]
    with torch.no_grad():
        for name, param in model.backbone.named_parameters():
            if param.requires_grad:
                param.add_(0.5)
    assert torch.allclose(model.frozen_global_features(points)[0], before)


def test_missing_bank_and_missing_index_are_clear_errors(tiny_config):
    model = get_peft_model(tiny_backbone(tiny_config), PointPEFTConfig(**TINY_PEFT), 5)
    with pytest.raises(MemoryBankError, match="no memory bank attached"):
        model.eval()(random_clouds(2, 160, 0))
    model.build_memory_bank(train_batches(), progress=False)
    with pytest.raises(MemoryBankError, match="needs sample_index"):
        model.train()(random_clouds(2, 160, 0))
    no_bank = get_peft_model(tiny_backbone(tiny_config), PointPEFTConfig(**TINY_PEFT, memory_bank=False), 5)
    assert no_bank.train()(random_clouds(2, 160, 0)).shape == (2, 5)


def test_bank_cache_is_reused_and_stale_cache_rebuilt(tiny_config, tmp_path, caplog):
    from pointpeft_ray.models.peft import memory_bank as mb

    model = get_peft_model(tiny_backbone(tiny_config), PointPEFTConfig(**TINY_PEFT), 5)
    batches = train_batches()
    first = model.build_memory_bank(batches, cache_dir=tmp_path, progress=False)
    files = list(tmp_path.glob("bank-*.arrow"))
    assert len(files) == 1 and not first.from_cache and len(first) == 24
    second = model.build_memory_bank(batches, cache_dir=tmp_path, progress=False)
    assert second.from_cache and torch.equal(first.max_features, second.max_features)
    # the Arrow file is readable by plain pyarrow, one row per training sample
    import pyarrow as pa
    table = pa.ipc.open_file(pa.memory_map(str(files[0]))).read_all()
    assert table.num_rows == 24 and table.column("sample_index").to_pylist() == list(range(24))
    # other backbone weights -> another key -> rebuilt, never reused
    other = get_peft_model(tiny_backbone(tiny_config, seed=5), PointPEFTConfig(**TINY_PEFT), 5)
    third = other.build_memory_bank(batches, cache_dir=tmp_path, progress=False)
    assert not third.from_cache and len(list(tmp_path.glob("bank-*.arrow"))) == 2
    # other data -> rebuilt
    fourth = model.build_memory_bank(train_batches(seed=7), cache_dir=tmp_path, progress=False)
    assert not fourth.from_cache
    # a truncated or tampered file under the right name is rebuilt
    files[0].write_bytes(files[0].read_bytes()[:100])
    with caplog.at_level("WARNING"):
        assert not model.build_memory_bank(batches, cache_dir=tmp_path, progress=False).from_cache
    assert len([r for r in caplog.records if "unreadable memory-bank cache" in r.getMessage()]) == 1
    stale = mb.MemoryBank(first.max_features * 0, first.cls_features, key={**first.key, "dataset": "other"})
    mb.write_bank_file(stale, files[0])
    rebuilt = model.build_memory_bank(batches, cache_dir=tmp_path, progress=False)
    assert not rebuilt.from_cache and torch.equal(rebuilt.max_features, first.max_features)
    assert not list(tmp_path.glob("*.tmp"))


def test_concurrent_builders_build_once(tiny_config, tmp_path):
    import threading

    from pointpeft_ray.models.peft.memory_bank import build_memory_bank

    model = get_peft_model(tiny_backbone(tiny_config), PointPEFTConfig(**TINY_PEFT), 5)
    calls = []

    def counted(points):
        calls.append(1)
        return model.frozen_global_features(points)

    results = []

    def build():
        results.append(build_memory_bank(counted, train_batches(), backbone_fingerprint=model.bank_fingerprint,
                                         grouping=model.grouping_key(), cache_dir=tmp_path, progress=False))

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 4  # one build of 4 batches, the other two threads read the cache
    assert sum(r.from_cache for r in results) == 2


def test_bank_subsampling(tiny_config):
    model = bank_model(tiny_config, bank_size=10, bank_sampling="fps", top_k=4)
    assert model.bank_rows.shape == (10, tiny_config.trans_dim)
    assert len(set(model.bank_row_ids.tolist())) == 10
    with pytest.raises(MemoryBankError, match="top_k"):
        get_peft_model(tiny_backbone(tiny_config), PointPEFTConfig(**TINY_PEFT, top_k=8), 5).build_memory_bank(
            [random_clouds(4, 160, 0)], progress=False)


def test_bank_rejects_one_shot_iterators_and_bad_batches(tiny_config):
    model = get_peft_model(tiny_backbone(tiny_config), PointPEFTConfig(**TINY_PEFT), 5)
    with pytest.raises(MemoryBankError, match="one-shot iterator"):
        model.build_memory_bank(iter(train_batches()), progress=False)
    with pytest.raises(MemoryBankError, match=r"expected \(B, N, 3\)"):
        model.build_memory_bank([torch.rand(4, 3)], progress=False)
    with pytest.raises(MemoryBankError, match="no batches"):
        model.build_memory_bank([], progress=False)


# ---- adapter save / load -------------------------------------------------------------

def test_adapter_roundtrip_and_wrong_backbone(tiny_config, tmp_path):
    model = bank_model(tiny_config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
    points = random_clouds(3, 160, 9)
    expected = model.eval()(points)
    model.save_adapter(tmp_path / "a")
    model.save_adapter(tmp_path / "a")  # overwriting an existing adapter is atomic too
    assert sorted(os.listdir(tmp_path)) == ["a"]
    assert sorted(os.listdir(tmp_path / "a")) == ["adapter_config.json", "adapter_weights.pt", "memory_bank.arrow"]
    fresh = PointPEFTModel.from_adapter(tiny_backbone(tiny_config), tmp_path / "a")
    assert torch.allclose(fresh.eval()(points), expected, atol=1e-6)
    with pytest.raises(CheckpointError, match="different backbone"):
        PointPEFTModel.from_adapter(tiny_backbone(tiny_config, seed=3), tmp_path / "a")
    other_config = get_peft_model(tiny_backbone(tiny_config), PointPEFTConfig(**TINY_PEFT, adapter_dim=4), 5)
    with pytest.raises(CheckpointError, match="config or class count differs"):
        other_config.load_adapter(tmp_path / "a")
    with pytest.raises(CheckpointError, match="not an adapter directory"):
        fresh.load_adapter(tmp_path)


def test_adapters_swap_on_a_shared_backbone(tiny_config, tmp_path):
    backbone = tiny_backbone(tiny_config)
    task_a = get_peft_model(backbone, PointPEFTConfig(**TINY_PEFT), 5)
    task_a.build_memory_bank(train_batches(), progress=False)
    with torch.no_grad():
        for param in (p for p in task_a.parameters() if p.requires_grad):
            param.add_(0.05)
    points = random_clouds(2, 160, 4)
    logits_a = task_a.eval()(points)
    task_a.save_adapter(tmp_path / "a")
    # a second task tunes the same backbone's biases; task A's adapter still loads and gives its logits
    task_b = get_peft_model(backbone, PointPEFTConfig(**TINY_PEFT), 5)
    with torch.no_grad():
        for param in (p for p in task_b.parameters() if p.requires_grad):
            param.sub_(0.3)
    again = PointPEFTModel.from_adapter(backbone, tmp_path / "a")
    assert torch.allclose(again.eval()(points), logits_a, atol=1e-6)


def test_full_finetune_baseline_and_peft_agree_on_backbone_names(tiny_config):
    full = FullFinetuneClassifier(tiny_config, 5)
    peft = get_peft_model(tiny_backbone(tiny_config), PointPEFTConfig(**TINY_PEFT), 5)
    backbone_names = {k for k in full.state_dict() if not k.startswith("cls_head_finetune.")}
    assert backbone_names == set(peft.backbone.state_dict())
    assert {k for k in full.state_dict() if k.startswith("cls_head_finetune.")} == {
        k for k in peft.state_dict() if k.startswith("cls_head_finetune.")}
