"""Self-checks of the Point-PEFT part of the published-code oracle (``published_reference.py``).

The oracle's ``PointTransformerBest`` / ``PublishedCacheQuery`` are written as plain,
restructured code.  Here they are checked against

* key lists written by hand from the published ``__init__``s (``Point_Mask_Rev_FT_scan_cp.py``,
  ``adapter_super.py``, ``Point_MAE_cp.py``), in published registration order;
* a second, *literal* transcription of the published forward code (same reshapes,
  ``square_distance`` / ``index_points``, the ``.tolist()`` bank gather, ``.cuda()``
  removed) running on the oracle's own modules;
* the published defects and data paths (token-index offset, prompt_cor grouping, cache
  prompt), and the released file layouts (ckpt-best.pth, bank .pt, pre-train .pth).

Nothing here imports ``pointpeft_ray``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import published_reference as ref  # noqa: E402

SHAPE = dict(trans_dim=48, depth=4, num_heads=6, num_group=16, group_size=8, cls_dim=7, adapter_dim=8,
             query_num_group=8, query_group_size=8)
P = 5
PROMPT_DEPTH = 2
N_POINTS = 96
BANK_SIZE = 12
ATOL = 1e-5


def _clouds(batch: int, seed: int, n: int = N_POINTS) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, n, 3, generator=g) * 2.0 - 1.0


@pytest.fixture(scope="module")
def config():
    return ref.make_pointpeft_config(**SHAPE)


@pytest.fixture(scope="module")
def query(config):
    return ref.randomize_pointpeft_(ref.PublishedCacheQuery(config, decoder_depth=2), seed=11).eval()


@pytest.fixture(scope="module")
def bank(query):
    return ref.build_published_bank(query, _clouds(BANK_SIZE, seed=101), batch=5)


def _model(config, bank, seed=1, prompt_depth=PROMPT_DEPTH, num_tokens=P):
    model = ref.PointTransformerBest(config, bank, num_tokens=num_tokens, prompt_depth=prompt_depth)
    return ref.randomize_pointpeft_(model, seed=seed).eval()


@pytest.fixture(scope="module")
def model(config, bank):
    return _model(config, bank)


@pytest.fixture(scope="module")
def pts():
    return _clouds(3, seed=5)


# --------------------------------------------------------------------------- names


def _linear(prefix, bias=True):
    return [prefix + ".weight"] + ([prefix + ".bias"] if bias else [])


def _bn(prefix):
    return [prefix + s for s in (".weight", ".bias", ".running_mean", ".running_var", ".num_batches_tracked")]


def _encoder(prefix):
    return (
        _linear(prefix + "first_conv.0") + _bn(prefix + "first_conv.1") + _linear(prefix + "first_conv.3")
        + _linear(prefix + "second_conv.0") + _bn(prefix + "second_conv.1") + _linear(prefix + "second_conv.3")
    )


def _published_peft_keys(depth: int) -> list[str]:
    """PointTransformer_best.__init__ order: own parameters (cls_token, cls_pos, prompt_cor),
    then group_divider, encoder, pos_embed, blocks, norm, propagation_0, cls_head_finetune.
    Block: own parameters (ad_gate, prompt_embeddings), then norm1, cp_adapter (if_third=True,
    every block), drop_path, norm2, mlp, adapter, adapter1, attn, out_transform, prompt_dropout.
    TransformerEncoder: pos_drop, blocks, attn1, norm3."""
    keys = ["cls_token", "cls_pos", "prompt_cor"] + _encoder("encoder.")
    keys += _linear("pos_embed.0") + _linear("pos_embed.2")
    for i in range(depth):
        b = f"blocks.blocks.{i}."
        keys += [b + "ad_gate", b + "prompt_embeddings"]
        keys += _linear(b + "norm1") + _linear(b + "cp_adapter.ln1") + _linear(b + "cp_adapter.ln2")
        keys += _linear(b + "norm2") + _linear(b + "mlp.fc1") + _linear(b + "mlp.fc2")
        keys += _linear(b + "adapter.ln1") + _linear(b + "adapter.ln2")
        keys += _linear(b + "adapter1.ln1") + _linear(b + "adapter1.ln2")
        keys += _linear(b + "attn.qkv", bias=False) + _linear(b + "attn.proj")
        keys += _bn(b + "out_transform.0")
    keys += _linear("blocks.attn1.qkv", bias=False) + _linear("blocks.attn1.proj") + _linear("blocks.norm3")
    keys += _linear("norm")
    for j in (0, 4, 8):
        keys += _linear(f"cls_head_finetune.{j}")
        if j < 8:
            keys += _bn(f"cls_head_finetune.{j + 1}")
    return keys


def _published_pretrain_keys(depth: int, decoder_depth: int) -> set[str]:
    """Point_MAE (cp_model) __init__: MAE_encoder (encoder, pos_embed, blocks, norm),
    mask_token, decoder_pos_embed, MAE_decoder (blocks, norm), increase_dim."""

    def vit_block(b):
        return (_linear(b + "norm1") + _linear(b + "norm2") + _linear(b + "mlp.fc1") + _linear(b + "mlp.fc2")
                + _linear(b + "attn.qkv", bias=False) + _linear(b + "attn.proj"))

    keys = _encoder("MAE_encoder.encoder.") + _linear("MAE_encoder.pos_embed.0") + _linear("MAE_encoder.pos_embed.2")
    for i in range(depth):
        keys += vit_block(f"MAE_encoder.blocks.blocks.{i}.")
    keys += _linear("MAE_encoder.norm") + ["mask_token"]
    keys += _linear("decoder_pos_embed.0") + _linear("decoder_pos_embed.2")
    for i in range(decoder_depth):
        keys += vit_block(f"MAE_decoder.blocks.{i}.")
    keys += _linear("MAE_decoder.norm") + _linear("increase_dim.0")
    return set(keys)


def test_state_dict_keys_are_the_published_names_in_published_order(config, bank):
    small = ref.PointTransformerBest(ref.make_pointpeft_config(**dict(SHAPE, depth=2)), bank, num_tokens=P,
                                     prompt_depth=1)
    assert list(small.state_dict()) == _published_peft_keys(2)
    # the bank is a plain attribute, not a parameter / buffer
    assert small.train_images_features_agg is bank and small.bank is bank
    sd = small.state_dict()
    c = SHAPE["trans_dim"]
    assert sd["prompt_cor"].shape == (P, 3)
    assert sd["blocks.blocks.1.prompt_embeddings"].shape == (P, c)  # unprompted block has them too
    assert sd["blocks.blocks.0.cp_adapter.ln1.weight"].shape == (8, c)  # reduction 8
    assert sd["blocks.blocks.0.adapter.ln1.weight"].shape == (SHAPE["adapter_dim"], c)
    assert sd["blocks.attn1.qkv.weight"].shape == (54, c)  # 18-wide, whatever the width
    assert sd["blocks.attn1.proj.weight"].shape == (c, 18)
    assert sd["cls_head_finetune.8.weight"].shape == (SHAPE["cls_dim"], 256)


def test_query_state_dict_keys_are_the_published_pretrain_names(query):
    keys = set(query.state_dict())
    assert keys == _published_pretrain_keys(SHAPE["depth"], 2)
    assert query.num_group == SHAPE["query_num_group"] and query.group_size == SHAPE["query_group_size"]
    assert query.state_dict()["increase_dim.0.weight"].shape[0] == 3 * SHAPE["query_group_size"]


# --------------------------------------------------------------------------- literal transcription


def _lit_square_distance(src, dst):
    B, N, _ = src.shape
    _, M, _ = dst.shape
    dist = -2 * torch.matmul(src, dst.permute(0, 2, 1))
    dist += torch.sum(src ** 2, -1).view(B, N, 1)
    dist += torch.sum(dst ** 2, -1).view(B, 1, M)
    return dist


def _lit_index_points(points, idx):
    B = points.shape[0]
    view_shape = list(idx.shape)
    view_shape[1:] = [1] * (len(view_shape) - 1)
    repeat_shape = list(idx.shape)
    repeat_shape[0] = 1
    batch_indices = torch.arange(B, dtype=torch.long).view(view_shape).repeat(repeat_shape)
    return points[batch_indices, idx, :]


def _lit_group(xyz, num_group, group_size):
    batch_size, num_points, _ = xyz.shape
    center_idx = ref.furthest_point_sample(xyz, num_group)
    center = _lit_index_points(xyz, center_idx)
    idx = ref.knn_indices(xyz, center, group_size)
    idx = (idx + torch.arange(0, batch_size).view(-1, 1, 1) * num_points).view(-1)
    center_idx = (center_idx + torch.arange(0, batch_size).view(-1, 1) * num_points).view(-1)
    neighborhood = xyz.view(batch_size * num_points, -1)[idx, :]
    neighborhood = neighborhood.view(batch_size, num_group, group_size, 3).contiguous() - center.unsqueeze(2)
    return neighborhood, center, idx, center_idx


def _lit_attention(attn, x):
    B, N, C = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, C // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    a = ((q @ k.transpose(-2, -1)) * (C // attn.num_heads) ** -0.5).softmax(dim=-1)
    return attn.proj((a @ v).transpose(1, 2).reshape(B, N, C))


def _lit_attention1(attn1, x):
    B, N, C = x.shape
    qkv = attn1.qkv(x).reshape(B, N, 3, attn1.num_heads, 18 // attn1.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    a = ((q @ k.transpose(-2, -1)) * 18 ** -0.5).softmax(dim=-1)
    return attn1.proj((a @ v).transpose(1, 2).reshape(B, N, 18))


def _lit_adapter(adapter, x, residual):
    out = adapter.ln1(x)
    out = out * torch.sigmoid(1.702 * out)
    out = adapter.ln2(out)
    return x + out if residual else out


def _lit_propagate(xyz1, xyz2, points1, points2, de_neighbors):
    B, N, C = xyz1.shape
    dists = _lit_square_distance(xyz1, xyz2)
    dists, idx = dists.sort(dim=-1)
    dists, idx = dists[:, :, :de_neighbors], idx[:, :, :de_neighbors]
    dist_recip = 1.0 / (dists + 1e-8)
    norm = torch.sum(dist_recip, dim=2, keepdim=True)
    weight = (dist_recip / norm).view(B, N, de_neighbors, 1)
    return points1 + 0.3 * torch.sum(_lit_index_points(points2, idx) * weight, dim=2)


def _lit_pooling(block, knn_x_w):
    lc_x = knn_x_w.max(dim=2)[0]
    return block.out_transform(lc_x.permute(0, 2, 1)).permute(0, 2, 1)


def _lit_block(block, x, center1, center2, idx, center_idx, group_size, cache_prompt, attn1, norm3, prompted):
    nt = block.num_tokens
    if prompted:
        prompt = block.prompt_embeddings.repeat(center2.shape[0], 1, 1)
        if cache_prompt is not None:
            prompt = prompt + _lit_adapter(block.cp_adapter, cache_prompt, True)
        x = torch.cat((x[:, 0].unsqueeze(1), prompt, x[:, 1:]), 1)
        x = _lit_attention(block.attn, block.norm1(x)) + x
        x_fn = block.mlp(block.norm2(x))
        x = 0.7 * _lit_adapter(block.adapter, x_fn, False) + x_fn + x
        prompt = x[:, 1:nt + 1]
        x = torch.cat((x[:, 0].unsqueeze(1), x[:, nt + 1:]), 1)
        B, G, _ = x.shape
        cls_x = x[:, 0]
        x = x[:, 1:]
        G = G - 1 + nt
        prompt_x = torch.cat((prompt, x), dim=1)
        x_nb = prompt_x.reshape(B * G, -1)[idx, :].reshape(B * center2.shape[1], group_size, -1)
        x_centers = prompt_x.reshape(B * G, -1)[center_idx, :].reshape(B, center2.shape[1], -1)
        x_nb = _lit_attention1(attn1, norm3(x_nb.clone())) + x_nb.clone()
        vis_x = _lit_pooling(block, x_nb.reshape(B, center2.shape[1], group_size, -1)) + 0.3 * x_centers
        x = _lit_propagate(center1, center2, x, vis_x, center2.shape[1])
        x = torch.cat((cls_x.unsqueeze(1), prompt, x), 1)
        x = _lit_adapter(block.adapter1, x, True)
        return torch.cat((x[:, 0].unsqueeze(1), x[:, nt + 1:]), 1)
    x_fn = _lit_attention(block.attn, block.norm1(x))
    x = x + x_fn
    x_fn = block.mlp(block.norm2(x))
    x = 0.7 * _lit_adapter(block.adapter, x_fn, False) + x_fn + x
    B, G, _ = x.shape
    cls_x = x[:, 0]
    x = x[:, 1:]
    G = G - 1
    x_nb = x.reshape(B * G, -1)[idx, :].reshape(B * center2.shape[1], group_size, -1)
    x_centers = x.reshape(B * G, -1)[center_idx, :].reshape(B, center2.shape[1], -1)
    x_nb = _lit_attention1(attn1, norm3(x_nb.clone())) + x_nb.clone()
    vis_x = _lit_pooling(block, x_nb.reshape(B, center2.shape[1], group_size, -1)) + 0.3 * x_centers
    x = _lit_propagate(center1, center2, x, vis_x, center2.shape[1])
    return _lit_adapter(block.adapter1, torch.cat((cls_x.unsqueeze(1), x), 1), True)


@torch.no_grad()
def _lit_query(query, pts):
    neighborhood, center, _, _ = _lit_group(pts, query.num_group, query.group_size)
    enc = query.MAE_encoder
    x = enc.encoder(neighborhood)
    pos = enc.pos_embed(center)
    for block in enc.blocks.blocks:
        x = x + pos
        x = x + _lit_attention(block.attn, block.norm1(x))
        x = x + block.mlp(block.norm2(x))
    return enc.norm(x).max(dim=1)[0]


@torch.no_grad()
def _lit_forward(model, pts, cp_feat):
    """PointTransformer_best.forward, line by line (radius mask, std lines, .cuda() dropped)."""
    neighborhood, center, idx, center_idx = _lit_group(pts, model.num_group, model.group_size)
    group_input_tokens = model.encoder(neighborhood)
    prompt_cor = model.prompt_cor.repeat(pts.shape[0], 1, 1)
    prompt_pts = torch.cat((prompt_cor, pts), dim=1)
    _, center_prompt, _, _ = _lit_group(prompt_pts, model.num_group, model.group_size)
    cls_tokens = model.cls_token.expand(group_input_tokens.size(0), -1, -1)
    cls_pos = model.cls_pos.expand(group_input_tokens.size(0), -1, -1)
    pos = torch.cat((cls_pos, model.pos_embed(center)), dim=1)
    x = torch.cat((cls_tokens, group_input_tokens), dim=1)
    g2, m2 = int(model.num_group / 2), int(model.group_size / 2)
    _, center_new, idx, center_idx = _lit_group(center, g2, m2)
    _, center_new_prompt, idx_prompt, center_idx_prompt = _lit_group(center_prompt, g2, m2)
    cache_prompt = None
    if cp_feat is not None:
        bank = model.train_images_features_agg
        K = prompt_cor.shape[1] - 2
        cp_feat_norm = cp_feat / cp_feat.norm(dim=-1, keepdim=True)
        new_knowledge = cp_feat_norm @ bank
        new_knowledge_k, idx_k = torch.topk(new_knowledge, K)
        new_knowledge_k = F.softmax(new_knowledge_k, dim=1).unsqueeze(1)
        train_features_k = [bank[:, idx_k[p]].tolist() for p in range(idx_k.shape[0])]
        train_features_k = torch.tensor(train_features_k).permute(0, 2, 1)
        feat_f = torch.matmul(new_knowledge_k, train_features_k)
        cache_prompt = torch.cat((cp_feat.unsqueeze(1), feat_f, train_features_k), 1)
    enc = model.blocks
    for layer_id, block in enumerate(enc.blocks):
        if layer_id < model.prompt_depth:
            x = _lit_block(block, x + pos, center_prompt, center_new_prompt, idx_prompt, center_idx_prompt, m2,
                           cache_prompt, enc.attn1, enc.norm3, True)
        else:
            x = _lit_block(block, x + pos, center, center_new, idx, center_idx, m2, cache_prompt, enc.attn1,
                           enc.norm3, False)
    x = model.norm(x)
    return model.cls_head_finetune(torch.cat([x[:, 0], x[:, 1:].max(1)[0]], dim=-1))


def test_oracle_equals_literal_transcription_of_published_code(model, query, pts):
    cp_feat = _lit_query(query, pts)
    torch.testing.assert_close(query(pts).detach(), cp_feat, atol=ATOL, rtol=ATOL)
    expected = _lit_forward(model, pts, cp_feat)
    torch.testing.assert_close(ref.published_logits(model, query, pts), expected, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(ref.published_logits(model, None, pts), _lit_forward(model, pts, None),
                               atol=ATOL, rtol=ATOL)


def test_literal_match_when_every_block_is_prompted_and_when_none_is(config, bank, query, pts):
    cp_feat = _lit_query(query, pts)
    for depth in (0, SHAPE["depth"]):
        m = _model(config, bank, seed=3, prompt_depth=depth)
        torch.testing.assert_close(ref.published_logits(m, query, pts), _lit_forward(m, pts, cp_feat),
                                   atol=ATOL, rtol=ATOL)


# --------------------------------------------------------------------------- published behaviour


def test_token_index_offset_defect_couples_neighbouring_samples(model, query, config, bank, pts):
    base = ref.published_logits(model, query, pts)
    changed = pts.clone()
    changed[0] = _clouds(1, seed=77)[0]
    after = ref.published_logits(model, query, changed)
    assert not torch.allclose(after[0], base[0])
    # sample 1 reads rows of sample 0 (offset b*G into B*(G+P) rows) ...
    assert (after[1] - base[1]).abs().max() > 1e-3
    # ... and sample 2 reads rows of sample 1, which after the first prompted block already
    # carry sample 0's influence: with two prompted blocks the coupling reaches sample 2 ...
    assert (after[2] - base[2]).abs().max() > 1e-4
    # ... with one prompted block it does not (sample 2 reads sample 1's rows and its own only)
    one = _model(config, bank, prompt_depth=1)
    o0, o1 = ref.published_logits(one, query, pts), ref.published_logits(one, query, changed)
    assert (o1[1] - o0[1]).abs().max() > 1e-3
    torch.testing.assert_close(o1[2], o0[2], atol=1e-6, rtol=0)
    # alone, sample 1 gives other logits than in the batch
    alone = ref.published_logits(model, query, pts[1:2])
    assert (alone[0] - base[1]).abs().max() > 1e-3
    # the first sample never reads another one
    torch.testing.assert_close(ref.published_logits(model, query, pts[0:1])[0], base[0], atol=1e-5, rtol=1e-5)
    # without prompted blocks the samples are independent: the coupling is the defect
    plain = _model(config, bank, prompt_depth=0)
    b0, b1 = ref.published_logits(plain, query, pts), ref.published_logits(plain, query, changed)
    torch.testing.assert_close(b1[1:], b0[1:], atol=1e-6, rtol=0)


def test_prompt_cor_takes_part_in_the_grouping(model, query, config, bank, pts):
    geo = model.geometry(pts)
    for b in range(pts.shape[0]):  # FPS over cat(prompt_cor, pts) starts at prompt_cor[0]
        torch.testing.assert_close(geo["center_prompt"][b, 0], model.prompt_cor[0].detach())
        torch.testing.assert_close(geo["center_new_prompt"][b, 0], model.prompt_cor[0].detach())
    assert geo["center_prompt"].shape == (3, SHAPE["num_group"], 3)
    assert geo["center_new_prompt"].shape == (3, SHAPE["num_group"] // 2, 3)
    assert geo["idx_prompt"].numel() == 3 * (SHAPE["num_group"] // 2) * (SHAPE["group_size"] // 2)
    # flat indices carry offset b * G (G = points of center_prompt), not b * (G + P)
    g = SHAPE["num_group"]
    per_sample = geo["center_idx_prompt"].view(3, -1)
    for b in range(3):
        assert per_sample[b].min() >= b * g and per_sample[b].max() < (b + 1) * g

    base = ref.published_logits(model, query, pts)
    moved = _model(config, bank)
    with torch.no_grad():
        moved.prompt_cor.add_(0.25)
    assert (ref.published_logits(moved, query, pts) - base).abs().max() > 1e-3
    # the prompt cloud is only used by prompted blocks
    plain = _model(config, bank, prompt_depth=0)
    plain_moved = _model(config, bank, prompt_depth=0)
    with torch.no_grad():
        plain_moved.prompt_cor.add_(0.25)
    torch.testing.assert_close(ref.published_logits(plain_moved, query, pts), ref.published_logits(plain, query, pts))


def test_fps_skip_rule_applies_to_the_prompt_cloud(config, bank, pts):
    m = _model(config, bank)
    with torch.no_grad():  # the published init: trunc_normal std .02, all inside the 1e-3 ball
        m.prompt_cor.copy_(torch.randn(P, 3, generator=torch.Generator().manual_seed(3)) * 0.01)
    assert (m.prompt_cor.pow(2).sum(-1) <= 1e-3).all()
    centre = m.geometry(pts)["center_prompt"]
    for b in range(pts.shape[0]):
        is_prompt = [(centre[b, i][None] == m.prompt_cor).all(-1).any().item() for i in range(centre.shape[1])]
        assert is_prompt[0] and not any(is_prompt[1:])  # only the forced first pick


def test_cache_prompt_takes_part_and_follows_the_bank_maths(model, query, pts, bank):
    cp_feat = query(pts).detach()
    with_cache = model(pts, cp_feat).detach()
    without = model(pts, None).detach()
    assert (with_cache - without).abs().max() > 1e-3
    prompt = model.cache_prompt(cp_feat)
    assert prompt.shape == (3, P, SHAPE["trans_dim"])
    torch.testing.assert_close(prompt[:, 0], cp_feat)  # raw, not normalised
    scores = (cp_feat / cp_feat.norm(dim=-1, keepdim=True)) @ bank
    top = scores.topk(P - 2)
    for b in range(3):
        torch.testing.assert_close(prompt[b, 2:], bank[:, top.indices[b]].T)
        torch.testing.assert_close(prompt[b, 1], torch.softmax(top.values[b], 0) @ bank[:, top.indices[b]].T)
    # the bank is used un-normalised: scaling one column changes the scores of that column
    assert not torch.allclose(bank.norm(dim=0), torch.ones(bank.shape[1]))
    with pytest.raises(ValueError):
        ref.PointTransformerBest(ref.make_pointpeft_config(**SHAPE), None, num_tokens=P).eval()(pts, cp_feat)


def test_eval_logits_ignore_dropout_and_are_repeatable(model, query, pts):
    a = ref.published_logits(model, query, pts)
    b = ref.published_logits(model, query, pts)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert model.blocks.blocks[0].adapter.dropout.p == 0.1 and not model.training


def test_randomize_moves_every_parameter_and_running_stat(config, bank):
    fresh = ref.PointTransformerBest(config, bank, num_tokens=P, prompt_depth=PROMPT_DEPTH)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    ref.randomize_pointpeft_(fresh, seed=4)
    for key, value in fresh.state_dict().items():
        assert not torch.equal(value, before[key]), key
        if value.is_floating_point() and value.numel() > 1:
            assert value.std() > 1e-3, key
        if key.endswith("running_var"):
            assert not torch.allclose(value, torch.ones_like(value))
    assert 0.15 < fresh.prompt_cor.std().item() < 0.6


# --------------------------------------------------------------------------- files


def _strip(state):
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def test_released_checkpoint_layout_round_trips(tmp_path, model, config, bank, query, pts):
    path = ref.save_published_pointpeft_checkpoint(model, tmp_path / "ckpt-best.pth")
    ckpt = torch.load(path, weights_only=True, map_location="cpu")
    assert set(ckpt) == {"base_model", "optimizer", "epoch", "metrics", "best_metrics"}
    assert all(k.startswith("module.") for k in ckpt["base_model"])
    assert isinstance(ckpt["epoch"], int)
    assert torch.is_tensor(ckpt["metrics"]["acc"]) and torch.is_tensor(ckpt["best_metrics"]["acc"])
    opt = ckpt["optimizer"]
    assert set(opt) == {"state", "param_groups"} and len(opt["param_groups"]) == 2
    n_opt = sum(len(g["params"]) for g in opt["param_groups"])
    assert n_opt == len(opt["state"]) < len(list(model.parameters()))  # only the PEFT parameters
    fresh = ref.PointTransformerBest(config, bank, num_tokens=P, prompt_depth=PROMPT_DEPTH)
    ref.randomize_pointpeft_(fresh, seed=99)
    fresh.load_state_dict(_strip(ckpt["base_model"]), strict=True)
    torch.testing.assert_close(ref.published_logits(fresh, query, pts), ref.published_logits(model, query, pts),
                               atol=0, rtol=0)
    no_prefix = ref.published_pointpeft_checkpoint(model, prefix="")
    assert list(no_prefix["base_model"]) == list(model.state_dict())


def test_bank_file_round_trips(tmp_path, bank, query):
    path = ref.save_published_bank(bank, tmp_path / "cache_shape.pt")
    loaded = torch.load(path, weights_only=True, map_location="cpu")
    assert torch.is_tensor(loaded) and loaded.shape == (SHAPE["trans_dim"], BANK_SIZE)
    torch.testing.assert_close(loaded, bank, atol=0, rtol=0)
    clouds = _clouds(BANK_SIZE, seed=101)
    torch.testing.assert_close(bank[:, 3], query(clouds[3:4])[0].detach(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ref.build_published_bank(query, clouds, batch=BANK_SIZE), bank, atol=1e-6, rtol=1e-6)


def test_query_builds_from_a_pretrain_checkpoint(tmp_path, config, query, pts):
    pretrain = ref.randomize_(ref.PointMAEPretrain(
        ref.make_config(trans_dim=48, depth=4, num_heads=6, num_group=8, group_size=8), decoder_depth=3), seed=21)
    path = ref.save_published_pretrain_checkpoint(pretrain, tmp_path / "pretrain.pth")
    loaded = ref.PublishedCacheQuery.from_pretrain_checkpoint(path, num_group=8, num_heads=6)
    assert set(loaded.state_dict()) == _published_pretrain_keys(4, 3)
    for key, value in pretrain.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, atol=0, rtol=0)
    torch.testing.assert_close(loaded(pts).detach(), _lit_query(loaded, pts), atol=ATOL, rtol=ATOL)
    also = ref.load_published_cache_query(path, num_group=8)
    torch.testing.assert_close(also(pts).detach(), loaded(pts).detach(), atol=0, rtol=0)
    # the query feature feeds the cache prompt of a model whose bank it built
    bank = ref.build_published_bank(loaded, _clouds(6, seed=8), batch=4)
    m = _model(config, bank)
    assert ref.published_logits(m, loaded, pts).shape == (3, SHAPE["cls_dim"])


def test_published_logits_can_resample_like_validate(model, query):
    cloud = _clouds(2, seed=31, n=120)
    sub = ref.gather_centres(cloud, ref.furthest_point_sample(cloud, N_POINTS))
    torch.testing.assert_close(ref.published_logits(model, query, cloud, npoints=N_POINTS),
                               ref.published_logits(model, query, sub), atol=0, rtol=0)


def test_attention1_width_is_fixed_and_heads_must_divide_18():
    assert ref.Attention1(96, num_heads=6).qkv.weight.shape == (54, 96)
    assert ref.Attention1(96, num_heads=3).head_dim == 6
    with pytest.raises(ValueError):
        ref.Attention1(64, num_heads=4)
