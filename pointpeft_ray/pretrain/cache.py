"""Pre-trained weights cached by the settings that make them.

`ensure_pretrained(config)` returns `<cache>/pretrained/<key>/pretrain.pth`,
pre-training first when it is not there. The key hashes every field that
changes the weights (not where the run is kept, the output path, the device or
the data cache folder). A manifest beside the file records the config, epochs,
final loss and wall time; concurrent callers serialise on a file lock and
pre-train once. An interrupted pre-training resumes from its run state.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Callable

from filelock import FileLock

from ..atomic import atomic_write_text
from ..data.cache import default_cache_dir
from ..file_names import MANIFEST_FILE, PRETRAINED_DIR, PRETRAINED_FILE
from .config import PretrainConfig
from .loop import PretrainResult, pretrain

# Bump when a code change alters what a config trains to.
PRETRAIN_CACHE_VERSION = 1
Runner = Callable[..., PretrainResult]
logger = logging.getLogger(__name__)


def weights_key(config: PretrainConfig) -> str:
    """Hash of the fields that change the trained weights."""
    fields = config.model_dump()
    for where in ("run_dir", "output", "device"):
        fields.pop(where)
    fields["data"].pop("cache_dir")
    fields["cache_version"] = PRETRAIN_CACHE_VERSION
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=10).hexdigest()


def cached_checkpoint_path(config: PretrainConfig) -> Path:
    root = Path(config.data.cache_dir) if config.data.cache_dir else default_cache_dir()
    return root / PRETRAINED_DIR / weights_key(config) / PRETRAINED_FILE


def read_manifest(checkpoint: Path) -> dict | None:
    try:
        return json.loads((checkpoint.parent / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None


def ensure_pretrained(config: PretrainConfig, runner: Runner | None = None) -> Path:
    """The cached checkpoint for `config`, pre-training it first if needed.

    `runner(config)` does the pre-training (default: in-process
    `pretrain`; pass a partial of distributed.pretrain.fit_pretrain for Ray).
    """
    path = cached_checkpoint_path(config)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".lock")):
        if _is_complete(path, config):
            logger.info(f"[pretrain] cached: {path}")
            return path
        run_dir = folder / "run"
        run_config = config.replace(output=str(path), run_dir=str(run_dir))
        logger.info(f"[pretrain] no cached weights for this config: pre-training into {folder}")
        result = (runner or pretrain)(run_config)
        _write_manifest(path, config, result)
        # The run state (weights + optimizer) only served resuming.
        shutil.rmtree(run_dir, ignore_errors=True)
    return path


def _is_complete(path: Path, config: PretrainConfig) -> bool:
    # The manifest is written after the checkpoint: without it the run did not finish.
    manifest = read_manifest(path)
    return path.is_file() and manifest is not None and manifest.get("key") == weights_key(config)


def _write_manifest(path: Path, config: PretrainConfig, result: PretrainResult) -> None:
    manifest = {
        "key": weights_key(config),
        "checkpoint": path.name,
        "config": config.model_dump(),
        "epochs": result.epochs,
        "final_loss": result.final_loss,
        "wall_seconds": result.wall_seconds,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "history": result.history,
    }
    atomic_write_text(path.parent / MANIFEST_FILE, json.dumps(manifest, indent=2, default=str))
