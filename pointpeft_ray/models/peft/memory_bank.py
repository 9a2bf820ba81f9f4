"""The memory bank: frozen-backbone global features of every training sample.

Built once per (backbone weights, dataset, grouping settings) and cached on disk
as an Arrow IPC file whose metadata carries that key. A cache whose key does
not match is rebuilt, never reused; concurrent builders of the same key
serialise on a file lock, and the file appears only complete (temp + rename).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa
import torch
from filelock import FileLock

from ...arrow_io import column_numpy, fixed_size_list, write_ipc_atomic
from ...errors import MemoryBankError
from ...progress import progress_bar
from ..ops import farthest_point_sample

MEMORY_BANK_FORMAT_VERSION = 1
FeatureFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class MemoryBank:
    """Features of N training samples, row i = sample i in dataset order."""

    max_features: torch.Tensor  # (N, C) max-pooled normalised tokens
    cls_features: torch.Tensor | None  # (N, C) cls token; None for encoders without one (published bank)
    key: dict = field(default_factory=dict)
    build_seconds: float = 0.0
    from_cache: bool = False

    def __post_init__(self) -> None:
        cls_shape = self.max_features.shape if self.cls_features is None else self.cls_features.shape
        if self.max_features.shape != cls_shape or self.max_features.dim() != 2:
            raise MemoryBankError(
                f"memory bank feature shapes disagree: max {tuple(self.max_features.shape)}, "
                f"cls {tuple(cls_shape)}"
            )

    def __len__(self) -> int:
        return self.max_features.shape[0]

    @property
    def dim(self) -> int:
        return self.max_features.shape[1]

    def features(self, source: str) -> torch.Tensor:
        if source == "max":
            return self.max_features
        if self.cls_features is None:
            raise MemoryBankError("this memory bank holds max-pooled features only (its encoder has no cls "
                                  "token); use bank_source='max'")
        return self.cls_features

    def select_rows(self, size: int | None, sampling: str, source: str, seed: int) -> torch.Tensor:
        """Sample indices kept in the bank: all, a random subset, or FPS in feature space."""
        count = len(self)
        if size is None or size >= count:
            return torch.arange(count)
        if sampling == "random":
            gen = torch.Generator().manual_seed(seed)
            return torch.randperm(count, generator=gen)[:size].sort().values
        feats = torch.nn.functional.normalize(self.features(source).float(), dim=-1)
        return farthest_point_sample(feats.unsqueeze(0), size, min_norm_sq=0.0)[0].sort().values

    def save(self, path: str | Path) -> Path:
        return write_bank_file(self, Path(path))

    @classmethod
    def load(cls, path: str | Path) -> "MemoryBank":
        return read_bank_file(Path(path))


def dataset_fingerprint(batches: Iterable) -> str:
    """A content hash of every point batch, in iteration order."""
    digest = hashlib.blake2b(digest_size=16)
    for batch in batches:
        points = _points_of(batch).detach().to("cpu", torch.float32).contiguous()
        digest.update(str(tuple(points.shape)).encode())
        digest.update(points.numpy().tobytes())
    return digest.hexdigest()


def build_memory_bank(
    feature_fn: FeatureFn,
    batches: Iterable,
    *,
    backbone_fingerprint: str,
    grouping: dict,
    cache_dir: str | Path | None = None,
    dataset_key: str | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> MemoryBank:
    """Run `feature_fn` (frozen backbone -> (max, cls) features) over the training
    batches, in dataset order, or load the cached result for the same key.

    `batches` must iterate the training set in a fixed order (no shuffling) and be
    re-iterable when no `dataset_key` is given (it is hashed first).
    """
    if dataset_key is None:
        if iter(batches) is batches:
            raise MemoryBankError(
                "build_memory_bank: `batches` is a one-shot iterator; pass a re-iterable "
                "(list, DataLoader) or give dataset_key"
            )
        dataset_key = dataset_fingerprint(batches)
    key = {
        "format": MEMORY_BANK_FORMAT_VERSION,
        "backbone": backbone_fingerprint,
        "dataset": dataset_key,
        "grouping": dict(sorted(grouping.items())),
    }
    if cache_dir is None:
        return _compute_bank(feature_fn, batches, key, device, progress)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"bank-{_key_hash(key)}.arrow"
    with FileLock(str(path) + ".lock"):
        cached = _load_if_fresh(path, key)
        if cached is not None:
            return cached
        bank = _compute_bank(feature_fn, batches, key, device, progress)
        write_bank_file(bank, path)
        return bank


def _compute_bank(feature_fn: FeatureFn, batches: Iterable, key: dict, device, progress: bool) -> MemoryBank:
    start = time.perf_counter()
    max_parts, cls_parts = [], []
    # tqdm takes the total from len(batches) where there is one
    with torch.no_grad():
        for batch in progress_bar(batches, progress, desc="memory bank", unit="batch", leave=False):
            points = _points_of(batch)
            if device is not None:
                points = points.to(device)
            max_feat, cls_feat = feature_fn(points.float())
            max_parts.append(max_feat.float().cpu())
            if cls_feat is not None:
                cls_parts.append(cls_feat.float().cpu())
    if not max_parts:
        raise MemoryBankError("build_memory_bank: the dataset yielded no batches")
    bank = MemoryBank(torch.cat(max_parts), torch.cat(cls_parts) if cls_parts else None, key=key)
    bank.build_seconds = time.perf_counter() - start
    return bank


def _points_of(batch) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        points = batch
    elif isinstance(batch, dict) and "points" in batch:
        points = batch["points"]
    elif isinstance(getattr(batch, "points", None), torch.Tensor):
        points = batch.points
    elif isinstance(batch, Sequence) and batch and isinstance(batch[0], torch.Tensor):
        points = batch[0]
    else:
        raise MemoryBankError(
            f"memory bank batches must be point tensors (B, N, 3), (points, ...) tuples or "
            f"dicts/objects with 'points'; got {type(batch).__name__}"
        )
    if points.dim() != 3 or points.shape[-1] < 3:
        raise MemoryBankError(f"memory bank batch has shape {tuple(points.shape)}; expected (B, N, 3)")
    return points[..., :3]


def _key_hash(key: dict) -> str:
    return hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=12).hexdigest()


def _load_if_fresh(path: Path, key: dict) -> MemoryBank | None:
    if not path.exists():
        return None
    try:
        bank = read_bank_file(path)
    except MemoryBankError as err:
        # derived data: rebuilt by the caller, but never silently
        logging.getLogger(__name__).warning("%s: unreadable memory-bank cache (%s); rebuilding it", path, err)
        return None
    if bank.key != json.loads(json.dumps(key)):
        return None
    bank.from_cache = True
    return bank


def write_bank_file(bank: MemoryBank, path: Path) -> Path:
    columns = {
        "sample_index": pa.array(np.arange(len(bank), dtype=np.int64)),
        "max_feature": fixed_size_list(bank.max_features.numpy()),
    }
    if bank.cls_features is not None:
        columns["cls_feature"] = fixed_size_list(bank.cls_features.numpy())
    table = pa.table(columns)
    meta = {b"pointpeft.bank_key": json.dumps(bank.key, sort_keys=True).encode(),
            b"pointpeft.bank_format": str(MEMORY_BANK_FORMAT_VERSION).encode()}
    return write_ipc_atomic(table.replace_schema_metadata(meta), path)


def read_bank_file(path: Path) -> MemoryBank:
    try:
        with pa.memory_map(str(path), "r") as source:
            table = pa.ipc.open_file(source).read_all()
    except (pa.ArrowInvalid, OSError) as err:
        raise MemoryBankError(f"{path}: not a readable memory bank Arrow file ({err})") from None
    meta = table.schema.metadata or {}
    if b"pointpeft.bank_key" not in meta or "max_feature" not in table.column_names:
        raise MemoryBankError(f"{path}: missing bank metadata or columns (found {table.column_names})")
    key = json.loads(meta[b"pointpeft.bank_key"])
    dim = table.schema.field("max_feature").type.list_size
    # Copied out of the mapped file: the bank moves to the model's device anyway.
    features = [torch.from_numpy(column_numpy(table, name).reshape(-1, dim).copy())
                if name in table.column_names else None for name in ("max_feature", "cls_feature")]
    return MemoryBank(*features, key=key)
