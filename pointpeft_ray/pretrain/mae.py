"""Point-MAE masked autoencoding: the model and its Chamfer-L2 loss.

Attribute names follow the published pre-training model (`MAE_encoder`,
`mask_token`, `decoder_pos_embed`, `MAE_decoder`, `increase_dim`), so the state
dict of `PointMAEPretrainModel` already is the published `pretrain.pth` layout.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models.backbone import BackboneConfig, Block, PointMAEBackbone
from .config import MaskSection, masked_count


def chamfer_directions(pred: torch.Tensor, true: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distance from each point to its nearest point in the other set.

    pred (P, N1, 3), true (P, N2, 3) -> ((P, N1) pred->true, (P, N2) true->pred).
    Exact per-coordinate differences: no |a|^2 + |b|^2 - 2ab cancellation.
    """
    if pred.dim() != 3 or true.dim() != 3 or pred.shape[0] != true.shape[0] or pred.shape[-1] != true.shape[-1]:
        raise ValueError(f"chamfer expects (P, N1, D) and (P, N2, D), got {tuple(pred.shape)} and {tuple(true.shape)}")
    squared = (pred.unsqueeze(2) - true.unsqueeze(1)).pow(2).sum(-1)  # (P, N1, N2)
    return squared.min(dim=2).values, squared.min(dim=1).values


def chamfer_l2(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Published ChamferDistanceL2: mean pred->true squared distance + mean true->pred."""
    to_true, to_pred = chamfer_directions(pred.float(), true.float())
    return to_true.mean() + to_pred.mean()


@dataclass
class PatchMask:
    """Per-sample patch indices, each row ascending (the published boolean-mask order)."""

    visible: torch.Tensor  # (B, G - masked) long
    masked: torch.Tensor  # (B, masked) long


def random_patch_mask(batch: int, num_group: int, num_masked: int, device: torch.device) -> PatchMask:
    """A different random subset of `num_masked` patches per sample (global RNG: seeded by the loop)."""
    order = torch.rand(batch, num_group, device=device).argsort(dim=1)
    return PatchMask(visible=order[:, num_masked:].sort(dim=1).values, masked=order[:, :num_masked].sort(dim=1).values)


def take_patches(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (B, G, ...) at index (B, K) -> (B, K, ...)."""
    rows = torch.arange(values.shape[0], device=values.device).unsqueeze(1)
    return values[rows, index]


class MaskedEncoder(PointMAEBackbone):
    """The published MaskTransformer: our backbone's encoder, positions, blocks and
    norm, seeing only the visible patches."""

    def __init__(self, config: BackboneConfig, encode_masked_patches: bool = True):
        super().__init__(config)
        # MaskTransformer has no cls token: a pre-trained file without one is what
        # fine-tuning expects, and DDP needs every parameter to take a gradient.
        del self.cls_token
        del self.cls_pos
        self.encode_masked_patches = encode_masked_patches

    def forward(self, neighbourhoods: torch.Tensor, centres: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Normalised visible tokens (B, V, C)."""
        if self.encode_masked_patches:
            # Published: every patch through the patch encoder (its BatchNorm
            # statistics then cover all patches, as in fine-tuning), then select.
            tokens, pos = self.embed(neighbourhoods, centres)
            tokens, pos = take_patches(tokens, visible), take_patches(pos, visible)
        else:
            tokens, pos = self.embed(take_patches(neighbourhoods, visible), take_patches(centres, visible))
        return self.norm(self.blocks(tokens, pos))


class MaskDecoder(nn.Module):
    """Published TransformerDecoder: pre-norm blocks with positions added before each,
    then a LayerNorm over the last `num_predicted` tokens (the mask tokens)."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float, drop_path_rate: float):
        super().__init__()
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, rate) for rate in rates)
        self.norm = nn.LayerNorm(dim)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, num_predicted: int) -> torch.Tensor:
        for block in self.blocks:
            x = block(x + pos)
        return self.norm(x[:, -num_predicted:])


@dataclass
class Reconstruction:
    predicted: torch.Tensor  # (B, masked, M, 3), relative to each patch centre
    target: torch.Tensor  # (B, masked, M, 3)
    mask: PatchMask


class PointMAEPretrainModel(nn.Module):
    """Masked autoencoder over point patches; forward(points) -> Chamfer-L2 loss."""

    def __init__(self, backbone: BackboneConfig, mae: MaskSection | None = None):
        super().__init__()
        mae = mae or MaskSection()
        dim = backbone.trans_dim
        self.backbone_config, self.mae_config = backbone, mae
        self.num_masked = masked_count(backbone.num_group, mae.mask_ratio)
        self.MAE_encoder = MaskedEncoder(backbone, mae.encode_masked_patches)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.decoder_pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, dim))
        self.MAE_decoder = MaskDecoder(dim, mae.decoder_depth, mae.decoder_num_heads or backbone.num_heads,
                                       backbone.mlp_ratio, mae.decoder_drop_path_rate)
        self.increase_dim = nn.Sequential(nn.Conv1d(dim, 3 * backbone.group_size, 1))

    def reconstruct(self, points: torch.Tensor) -> Reconstruction:
        neighbourhoods, centres = self.MAE_encoder.group(points)
        batch, groups, size, _ = neighbourhoods.shape
        mask = random_patch_mask(batch, groups, self.num_masked, points.device)
        visible_tokens = self.MAE_encoder(neighbourhoods, centres, mask.visible)
        decoded = self._decode(visible_tokens, take_patches(centres, mask.visible), take_patches(centres, mask.masked))
        predicted = self.increase_dim(decoded.transpose(1, 2)).transpose(1, 2)
        return Reconstruction(predicted.reshape(batch, self.num_masked, size, 3),
                              take_patches(neighbourhoods, mask.masked), mask)

    def _decode(self, visible_tokens: torch.Tensor, visible_centres: torch.Tensor,
                masked_centres: torch.Tensor) -> torch.Tensor:
        batch = visible_tokens.shape[0]
        mask_tokens = self.mask_token.expand(batch, self.num_masked, -1).to(visible_tokens.dtype)
        x = torch.cat([visible_tokens, mask_tokens], dim=1)
        pos = self.decoder_pos_embed(torch.cat([visible_centres, masked_centres], dim=1))
        return self.MAE_decoder(x, pos, self.num_masked)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        out = self.reconstruct(points)
        size = self.backbone_config.group_size
        return chamfer_l2(out.predicted.reshape(-1, size, 3), out.target.reshape(-1, size, 3))
