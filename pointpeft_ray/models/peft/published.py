"""The released Point-PEFT files, as released: `ckpt-best.pth`, Point-MAE's
`pretrain.pth` and the memory bank `cache_shape.pt`.

`load_published_pointpeft` builds a PointPEFTModel with every published behaviour
switched on (`PointPEFTConfig.published()`), the pre-trained backbone from
`pretrain.pth`, everything the published run trained from `ckpt-best.pth`, and the
bank attached; its eval forward gives the published model's logits
(docs/method.md, "Differences from the published code"). Every file is checked before the model is
returned: a wrong file is one error naming it and the key or shape, never a
partly loaded model.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from ...errors import CheckpointError, MemoryBankError
from ..backbone import BackboneConfig, PointMAEBackbone
from ..checkpoint import LoadReport, load_checkpoint, read_state_dict
from .config import PointPEFTConfig
from .memory_bank import MEMORY_BANK_FORMAT_VERSION, MemoryBank
from .model import PointPEFTModel, get_peft_model

# The published forward prompts the blocks with layer_id <= 5, queries with a
# Point-MAE pre-training encoder of 64 groups, and retrieves K = P - 2 rows.
PUBLISHED_PROMPT_DEPTH = 6
PUBLISHED_QUERY_GROUPS = 64
# Backbone tensors a Point-PEFT run trains or updates (BatchNorm statistics):
# taken from ckpt-best.pth over the pre-trained ones.
_BACKBONE_BLOCK_PARTS = ("norm1", "norm2", "attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
_BLOCK_KEY = re.compile(r"^blocks\.blocks\.(\d+)\.(.+)$")


def load_published_pointpeft(ckpt_best: str | Path, pretrain: str | Path, bank: str | Path,
                             num_classes: int = 15, backbone: BackboneConfig | None = None,
                             prompt_depth: int = PUBLISHED_PROMPT_DEPTH,
                             query_groups: int = PUBLISHED_QUERY_GROUPS) -> PointPEFTModel:
    """The published Point-PEFT model from its three released files, in eval mode.

    `backbone`: the fine-tune backbone shape; default: the checkpoint's width and depth
    with the published heads (6) and grouping (128 groups of 32, ScanObjectNN);
    `query_groups`: patches of the bank encoder (published 64).
    """
    tuned = read_state_dict(ckpt_best)
    _check_is_pointpeft(tuned, ckpt_best)
    config = backbone or backbone_of(tuned)
    sizes = _published_sizes(tuned, ckpt_best, config, num_classes, prompt_depth)
    peft_config = PointPEFTConfig.published(bank_num_group=query_groups, **sizes)
    backbone_module = PointMAEBackbone(config)
    report = load_checkpoint(backbone_module, pretrain)
    _check_pretrain(report, pretrain)
    model = get_peft_model(backbone_module, peft_config, num_classes)
    ours = map_published_state(tuned, config.depth, peft_config.prompt_depth, ckpt_best)
    _load_exactly(model, ours, ckpt_best)
    model.attach_memory_bank(read_published_bank(bank, config.trans_dim))
    return model.eval()


def read_published_bank(path: str | Path, dim: int) -> MemoryBank:
    """The released bank file: a raw (C, N) tensor of N training features (weights only)."""
    path = Path(path)
    if not path.is_file():
        raise MemoryBankError(f"memory bank file not found: {path}")
    try:
        tensor = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, KeyError, ValueError) as err:
        raise MemoryBankError(f"{path}: not a readable torch tensor file ({str(err).splitlines()[0]})") from None
    if isinstance(tensor, dict) and len(tensor) == 1:
        tensor = next(iter(tensor.values()))  # a bank saved inside a one-entry dict
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 2:
        found = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise MemoryBankError(f"{path}: expected a 2-D ({dim} x N) bank tensor, found {found}")
    if tensor.shape[0] != dim:
        raise MemoryBankError(f"{path}: bank of shape {tuple(tensor.shape)}; expected {dim} x N "
                              f"(feature width {dim} first, as released)")
    if tensor.shape[1] < 2 or not torch.isfinite(tensor).all():
        raise MemoryBankError(f"{path}: the bank needs at least 2 finite rows, found shape "
                              f"{tuple(tensor.shape)} ({int((~torch.isfinite(tensor)).sum())} non-finite values)")
    key = {"format": MEMORY_BANK_FORMAT_VERSION, "source": "published", "file": path.name}
    return MemoryBank(tensor.T.float().contiguous(), None, key=key)


def map_published_state(state: dict[str, torch.Tensor], depth: int, prompt_depth: int,
                        path: str | Path = "checkpoint") -> dict[str, torch.Tensor]:
    """Published `PointTransformer_best` names -> PointPEFTModel names.

    Tensors the published forward never uses (prompt tokens and cache adapters of
    the blocks past `prompt_depth`, `ad_gate`) are dropped; any other unknown name
    is an error naming it.
    """
    ours: dict[str, torch.Tensor] = {}
    prompt_tokens: dict[int, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        target = _our_name(key, depth, prompt_depth)
        if target == "prompt.tokens":
            prompt_tokens[int(_BLOCK_KEY.match(key).group(1))] = value
        elif target == "":
            continue  # held by the published model, unused by its forward
        elif target is None:
            unknown.append(key)
        else:
            ours[target] = value
    if unknown:
        raise CheckpointError(f"{path}: names not in a published Point-PEFT model: {', '.join(unknown[:8])}"
                              + (f" (and {len(unknown) - 8} more)" if len(unknown) > 8 else ""))
    missing = [i for i in range(prompt_depth) if i not in prompt_tokens]
    if missing:
        raise CheckpointError(f"{path}: missing prompt tokens: "
                              + ", ".join(f"blocks.blocks.{i}.prompt_embeddings" for i in missing))
    ours["prompt.tokens"] = torch.stack([prompt_tokens[i] for i in range(prompt_depth)])
    return ours


def _our_name(key: str, depth: int, prompt_depth: int) -> str | None:
    """Our name for a published key; "" for a published tensor we drop; None if unknown."""
    if key in ("cls_token", "cls_pos") or key.startswith(("encoder.", "pos_embed.", "norm.")):
        return f"backbone.{key}"
    if key == "prompt_cor":
        return "prompt.coordinates"
    if key.startswith("cls_head_finetune."):
        return key
    for published, ours in (("blocks.attn1.", "neighbour_attention."), ("blocks.norm3.", "neighbour_attention.norm.")):
        if key.startswith(published):
            return ours + key[len(published):]
    match = _BLOCK_KEY.match(key)
    if not match or int(match.group(1)) >= depth:
        return None
    index, rest = int(match.group(1)), match.group(2)
    prompted = index < prompt_depth
    if rest.startswith(_BACKBONE_BLOCK_PARTS):
        return f"backbone.{key}"
    if rest == "prompt_embeddings":
        return "prompt.tokens" if prompted else ""
    if rest == "ad_gate":
        return ""
    adapters = {"adapter.": f"adapters.{index}.mlp_adapter.", "adapter1.": f"adapters.{index}.out_adapter.",
                "cp_adapter.": f"prompt.source_adapters.{index}." if prompted else None,
                "out_transform.0.": f"adapters.{index}.pool_norm."}
    for published, ours in adapters.items():
        if rest.startswith(published):
            if ours is None:
                return ""
            leaf = rest[len(published):]
            return ours + leaf.replace("ln1.", "down.").replace("ln2.", "up.")
    return None


def backbone_of(state: dict) -> BackboneConfig:
    """The backbone shape a published checkpoint implies: its width and depth, the rest published."""
    width = state["cls_token"].shape[-1] if "cls_token" in state else BackboneConfig().trans_dim
    depth = 1 + max(int(m.group(1)) for m in map(_BLOCK_KEY.match, state) if m)
    return BackboneConfig(trans_dim=width, depth=depth, encoder_dims=width)


def _check_is_pointpeft(state: dict, path) -> None:
    needed = ("prompt_cor", "blocks.attn1.qkv.weight", "blocks.blocks.0.adapter.ln1.weight",
              "blocks.blocks.0.prompt_embeddings", "cls_head_finetune.0.weight")
    absent = [key for key in needed if key not in state]
    if absent:
        hint = (" (it looks like a plain Point-MAE fine-tune or pre-training checkpoint)"
                if "blocks.blocks.0.attn.qkv.weight" in state else "")
        raise CheckpointError(f"{path}: not a published Point-PEFT checkpoint: no {', '.join(absent)}{hint}")


def _published_sizes(state: dict, path, config: BackboneConfig, num_classes: int, prompt_depth: int) -> dict:
    """PEFT sizes read from the checkpoint's shapes, checked against the backbone."""
    width = state["cls_token"].shape[-1] if "cls_token" in state else None
    depth = 1 + max(int(m.group(1)) for m in map(_BLOCK_KEY.match, state) if m)
    if width != config.trans_dim or depth != config.depth:
        raise CheckpointError(f"{path}: a model of width {width} and depth {depth}; the backbone config has "
                              f"trans_dim {config.trans_dim}, depth {config.depth}")
    head = state[_last_head_weight(state)]
    if head.shape[0] != num_classes:
        raise CheckpointError(f"{path}: the head has {head.shape[0]} classes, num_classes is {num_classes}")
    tokens = state["blocks.blocks.0.prompt_embeddings"]
    if tokens.dim() != 2 or tokens.shape[1] != width:
        raise CheckpointError(f"{path}: blocks.blocks.0.prompt_embeddings has shape {tuple(tokens.shape)}; "
                              f"expected (P, {width})")
    if not 1 <= prompt_depth <= depth:
        raise CheckpointError(f"prompt_depth must be within 1..{depth}, got {prompt_depth}")
    length = tokens.shape[0]
    if state["prompt_cor"].shape != (length, 3):
        raise CheckpointError(f"{path}: prompt_cor has shape {tuple(state['prompt_cor'].shape)}; "
                              f"expected ({length}, 3)")
    cache_adapter = state.get("blocks.blocks.0.cp_adapter.ln1.weight")
    if cache_adapter is None:
        raise CheckpointError(f"{path}: no blocks.blocks.0.cp_adapter.ln1.weight (the prompts' bank adapter)")
    qkv = state["blocks.attn1.qkv.weight"]
    if qkv.shape[0] % 3:
        raise CheckpointError(f"{path}: blocks.attn1.qkv.weight has {qkv.shape[0]} rows; expected 3 x heads x dim")
    return {"prompt_length": length, "top_k": length - 2, "prompt_depth": prompt_depth,
            "adapter_dim": state["blocks.blocks.0.adapter.ln1.weight"].shape[0],
            "prompt_adapter_width": cache_adapter.shape[0],
            "num_subcentres": config.num_group // 2, "neighbours": config.group_size // 2}


def _last_head_weight(state: dict) -> str:
    layers = [int(k.split(".")[1]) for k in state if k.startswith("cls_head_finetune.") and k.endswith(".weight")
              and state[k].dim() == 2]
    return f"cls_head_finetune.{max(layers)}.weight"


def _check_pretrain(report: LoadReport, path) -> None:
    # A Point-MAE pre-training checkpoint has no cls token: ckpt-best.pth brings it.
    missing = [key for key in report.missing if key not in ("cls_token", "cls_pos")]
    if missing:
        raise CheckpointError(f"{path}: not a Point-MAE pre-training checkpoint of this backbone: missing "
                              f"{', '.join(missing[:8])}" + (f" (and {len(missing) - 8} more)" if len(missing) > 8 else ""))
    if report.unknown:
        raise CheckpointError(f"{path}: unexpected tensors for a Point-MAE pre-training checkpoint: "
                              f"{', '.join(report.unknown[:8])}")


def _load_exactly(model: PointPEFTModel, state: dict[str, torch.Tensor], path) -> None:
    """Every tensor the published run trained or updated, from the checkpoint; its
    frozen backbone tensors must be the pre-trained ones (else the pair of files
    does not belong together and the logits would be wrong without a word)."""
    target = model.state_dict()
    expected = set(model.adapter_state_dict())
    missing = sorted(expected - set(state))
    extra = sorted(set(state) - set(target))
    if missing or extra:
        raise CheckpointError(f"{path}: does not fit the published Point-PEFT model: missing {missing[:8]}, "
                              f"unexpected {extra[:8]}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(target[key].shape):
            raise CheckpointError(f"{path}: shape mismatch for {key!r}: checkpoint has {tuple(value.shape)}, "
                                  f"the model expects {tuple(target[key].shape)}")
        if key not in expected and not torch.allclose(value.float(), target[key].float(), rtol=1e-5, atol=1e-6):
            raise CheckpointError(f"{path}: the frozen tensor {key!r} differs from the pre-trained one: this "
                                  "checkpoint was not fine-tuned from the given pretrain.pth")
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
