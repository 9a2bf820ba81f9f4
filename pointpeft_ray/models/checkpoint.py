"""Loading published Point-MAE / Point-BERT checkpoints, and weight fingerprints."""
from __future__ import annotations

import hashlib
import pickle
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

from ..errors import CheckpointError

# The outer wrapper (DDP) first, then the model-specific prefixes of the
# published pre-train / fine-tune code.
WRAPPER_PREFIX = "module."
_MODEL_PREFIXES = ("MAE_encoder.", "base_model.", "transformer_q.")
# Parts of the Point-MAE pre-training model that fine-tuning never uses: the
# decoder, its mask token and positions, and the point-prediction head.
PRETRAIN_HEAD_KEYS = ("mask_token",)
PRETRAIN_HEAD_PREFIXES = ("MAE_decoder.", "decoder_pos_embed.", "increase_dim.")


@dataclass
class LoadReport:
    """`unexpected` is every checkpoint tensor the model did not take (torch's
    meaning); it splits into `pretrain_heads` (the known pre-training-only parts,
    expected to be ignored) and `unknown` (anything else: worth a look)."""

    path: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    loaded: int = 0

    @property
    def pretrain_heads(self) -> list[str]:
        return [key for key in self.unexpected if is_pretrain_head_key(key)]

    @property
    def unknown(self) -> list[str]:
        return [key for key in self.unexpected if not is_pretrain_head_key(key)]

    def __str__(self) -> str:
        lines = [f"loaded {self.loaded} tensors from {self.path}"]
        if self.missing:
            lines.append(f"missing ({len(self.missing)}): {', '.join(self.missing)}")
        if self.pretrain_heads:
            heads = self.pretrain_heads
            lines.append(f"ignored pre-training heads ({len(heads)}): {', '.join(_summarise(heads, limit=0))}")
        if self.unknown:
            lines.append(f"unexpected ({len(self.unknown)}): {', '.join(_summarise(self.unknown))}")
        return "\n".join(lines)


def is_pretrain_head_key(key: str) -> bool:
    """A Point-MAE pre-training-only tensor (decoder, mask token, increase_dim), after prefix stripping."""
    key = key.removeprefix(WRAPPER_PREFIX)
    return key in PRETRAIN_HEAD_KEYS or key.startswith(PRETRAIN_HEAD_PREFIXES)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The model state of a checkpoint file, prefixes stripped to our names."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused to load: the file needs arbitrary pickle (code execution) "
            f"beyond tensors and plain containers, and is only read with weights_only=True. "
            f"Re-save its state dict alone if you trust it. Detail: {str(err).splitlines()[0]}"
        ) from None
    except Exception as err:  # noqa: BLE001 - torch raises many types for a file it cannot parse
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(err).__name__}: {detail})") from None
    return strip_prefixes(_model_state(obj, path))


def _model_state(obj: object, path: Path) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for entry in ("base_model", "model", "state_dict"):
            if isinstance(obj.get(entry), Mapping):
                return obj[entry]
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise CheckpointError(
        f"{path}: expected a dict with a 'base_model' or 'model' state dict, or a bare state dict; "
        f"found {type(obj).__name__} with keys {list(obj)[:8] if isinstance(obj, Mapping) else '-'}"
    )


def strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        key = key.removeprefix(WRAPPER_PREFIX)
        for prefix in _MODEL_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        out[key] = value
    return out


def load_checkpoint(module: nn.Module, path: str | Path, verbose: bool = False,
                    state: Mapping[str, torch.Tensor] | None = None) -> LoadReport:
    """Load a published (or our own) checkpoint into `module`.

    Accepts the Point-MAE pre-train layout (`base_model` / `model`, `module.` and
    `MAE_encoder.` prefixes), Point-MAE fine-tuned (`base_model.`, with head),
    Point-BERT (`transformer_q.`) and bare state dicts. Returns the missing and
    unexpected keys, the latter split into ignored pre-training heads (decoder,
    mask token, increase_dim) and unknown keys; a shape mismatch is an error
    naming the key and both shapes. `state`: the file's tensors already read (by
    read_state_dict, e.g. once per node through Ray's object store); `path` then only
    names them in messages.
    """
    state = read_state_dict(path) if state is None else state
    target = module.state_dict()
    for key, value in state.items():
        if key in target and tuple(target[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"{path}: shape mismatch for {key!r}: checkpoint has {tuple(value.shape)}, "
                f"model expects {tuple(target[key].shape)} (is the backbone config the same?)"
            )
    result = module.load_state_dict(state, strict=False)
    # New weights: originals kept for PEFT (see peft.model) no longer apply.
    if hasattr(module, "pretrained_reference"):
        del module.pretrained_reference
    report = LoadReport(
        path=str(path),
        missing=list(result.missing_keys),
        unexpected=list(result.unexpected_keys),
        loaded=sum(1 for k in state if k in target),
    )
    if report.loaded == 0:
        raise CheckpointError(
            f"{path}: no tensor name matches the model (first checkpoint keys: {list(state)[:5]})"
        )
    _check_feature_tensors(path, target, state)
    if verbose:
        print(report)
    return report


# The tensors that make the backbone's features: a checkpoint must hold every one of them
# (a pre-training lacks only the cls token/position and the head, which train).
FEATURE_PREFIXES = ("encoder.", "reduce_dim.", "pos_embed.", "blocks.")


def _check_feature_tensors(path, target: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> None:
    required = [key for key in target if key.startswith(FEATURE_PREFIXES)]
    absent = [key for key in required if key not in state]
    if absent:
        raise CheckpointError(
            f"{path}: holds {len(required) - len(absent)} of the backbone's {len(required)} feature tensors (patch "
            f"encoder, positional embedding, transformer blocks); missing {_summarise(absent)[:6]}. Is it a "
            "checkpoint of this backbone size (model.preset / model.backbone)?")


def fingerprint_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """A content hash of named tensors (names, dtypes, shapes and bytes)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(named, key=lambda item: item[0]):
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def _summarise(keys: list[str], limit: int = 12) -> list[str]:
    """Group long key lists by their first component so reports stay readable."""
    if len(keys) <= limit:
        return keys
    groups = Counter(key.split(".")[0] for key in keys)  # in order of first appearance
    return [f"{head}.* ({n})" if n > 1 else head for head, n in groups.items()]
