"""Point-MAE pre-training: masked autoencoding of point patches, Point-MAE checkpoints, a weights cache.

- `PretrainConfig` (config): the run, validated; YAML maps onto it 1:1.
- `PointMAEPretrainModel`, `chamfer_l2` (mae): the masked autoencoder and its loss.
- `pretrain` (loop): the loop, in-process or on a Ray Train worker.
- `write_pretrain_checkpoint` (checkpoint): the published `pretrain.pth` layout, written atomically.
- `ensure_pretrained` (cache): cached weights for a config, pre-trained once.
"""
from .cache import cached_checkpoint_path, ensure_pretrained, weights_key
from .checkpoint import write_pretrain_checkpoint
from .config import PretrainConfig
from .loop import PretrainResult, pretrain
from .mae import PointMAEPretrainModel, chamfer_directions, chamfer_l2, random_patch_mask

__all__ = [
    "PretrainConfig", "PointMAEPretrainModel", "chamfer_l2", "chamfer_directions", "random_patch_mask",
    "pretrain", "PretrainResult", "write_pretrain_checkpoint", "ensure_pretrained", "cached_checkpoint_path",
    "weights_key",
]
