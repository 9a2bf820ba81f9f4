"""The Point-MAE transformer (also Point-BERT's fine-tune model).

Parameter names follow the published code exactly (`encoder.first_conv.0.weight`,
`pos_embed.0.weight`, `cls_token`, `blocks.blocks.3.attn.qkv.weight`, `norm.weight`)
so official checkpoints load after stripping their prefix and nothing else.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from ..configuration import StrictConfig
from .ops import group_points


class BackboneConfig(StrictConfig):
    """Backbone shape with the published config names; defaults: Point-MAE on ScanObjectNN."""

    trans_dim: int = Field(384, ge=8, description="token width C")
    depth: int = Field(12, ge=1, description="number of transformer blocks")
    num_heads: int = Field(6, ge=1)
    num_group: int = Field(128, ge=2, description="number of patches G (FPS centres)")
    group_size: int = Field(32, ge=2, description="points per patch M (kNN)")
    encoder_dims: int = Field(384, ge=8, description="patch encoder output; != trans_dim adds reduce_dim (Point-BERT)")
    drop_path_rate: float = Field(0.1, ge=0.0, lt=1.0)
    mlp_ratio: float = Field(4.0, gt=0.0)
    head_style: Literal["point_mae", "point_bert"] = "point_mae"
    head_hidden: int = Field(256, ge=8, description="hidden width of the classification head (published: 256)")
    fps_start: Literal["first", "random"] = "first"

    @model_validator(mode="after")
    def _heads_divide_width(self):
        if self.trans_dim % self.num_heads:
            raise ValueError(
                f"trans_dim ({self.trans_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        return self

    @classmethod
    def from_published(cls, model_section: dict) -> tuple["BackboneConfig", int | None]:
        """Map a published YAML `model:` section (NAME, cls_dim, trans_dim, ...) to a config.

        Returns (config, number of classes or None).
        """
        section = dict(model_section)
        section.pop("NAME", None)
        num_classes = section.pop("cls_dim", None)
        return cls.from_dict(section, where="published model config"), num_classes


class PatchEncoder(nn.Module):
    """Mini-PointNet: one token per neighbourhood (published name: `Encoder`)."""

    def __init__(self, out_dims: int):
        super().__init__()
        self.first_conv = nn.Sequential(
            nn.Conv1d(3, 128, 1), nn.BatchNorm1d(128), nn.ReLU(inplace=True), nn.Conv1d(128, 256, 1)
        )
        self.second_conv = nn.Sequential(
            nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Conv1d(512, out_dims, 1)
        )

    # Without autograd nothing is kept, so patches go through in chunks: the
    # (patches, 512, M) intermediates would otherwise set the step's peak
    # memory. GPUs get bigger chunks: there, launches cost more than memory.
    no_grad_chunk = {"cpu": 1024, "cuda": 8192}

    def forward(self, neighbourhoods: torch.Tensor) -> torch.Tensor:
        batch, groups, size, _ = neighbourhoods.shape
        x = neighbourhoods.reshape(batch * groups, size, 3).transpose(1, 2)
        chunk = self.no_grad_chunk.get(x.device.type, 8192)
        if not torch.is_grad_enabled() and x.shape[0] > chunk:
            parts = [self._encode(part) for part in x.split(chunk)]
            return torch.cat(parts).reshape(batch, groups, -1)
        return self._encode(x).reshape(batch, groups, -1)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-1]
        feat = self.first_conv(x)
        pooled = feat.max(dim=2, keepdim=True).values
        feat = torch.cat([pooled.expand(-1, -1, size), feat], dim=1)
        feat = self.second_conv(feat)
        return feat.max(dim=2).values


class DropPath(nn.Module):
    """Stochastic depth per sample."""

    def __init__(self, prob: float):
        super().__init__()
        self.prob = prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"prob={self.prob}"


def _keep(x: torch.Tensor) -> torch.Tensor:
    return x


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        # Same maths as the published softmax(q k^T * scale) v; the fused kernel
        # saves memory and time on both CPU and GPU.
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm ViT block."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def attention_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(self.norm1(x))

    def mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm2(x))

    def forward(self, x: torch.Tensor, stochastic_depth: bool = True) -> torch.Tensor:
        drop = self.drop_path if stochastic_depth else _keep
        x = x + drop(self.attention_branch(x))
        return x + drop(self.mlp_branch(x))


class TransformerEncoder(nn.Module):
    """The block stack; positions are added before every block, as published."""

    def __init__(self, config: BackboneConfig):
        super().__init__()
        rates = torch.linspace(0, config.drop_path_rate, config.depth).tolist()
        self.blocks = nn.ModuleList(
            Block(config.trans_dim, config.num_heads, config.mlp_ratio, rate) for rate in rates
        )

    def forward(self, x: torch.Tensor, pos: torch.Tensor, stochastic_depth: bool = True) -> torch.Tensor:
        for block in self.blocks:
            x = block(x + pos, stochastic_depth)
        return x


class PointMAEBackbone(nn.Module):
    """Grouping, patch encoder, positional embedding, transformer, final norm."""

    def __init__(self, config: BackboneConfig | None = None):
        super().__init__()
        config = config or BackboneConfig()
        self.config = config
        dim = config.trans_dim
        self.encoder = PatchEncoder(config.encoder_dims)
        if config.encoder_dims != dim:
            self.reduce_dim = nn.Linear(config.encoder_dims, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, dim))
        self.blocks = TransformerEncoder(config)
        self.norm = nn.LayerNorm(dim)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.cls_pos, std=0.02)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # The forward is split into stages so PEFT can reuse the frozen stages
    # (grouping, patch tokens) and run its own block loop.
    def group(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if points.dim() != 3 or points.shape[-1] != 3:
            raise ValueError(f"expected points of shape (batch, N, 3), got {tuple(points.shape)}")
        if points.shape[1] < self.config.num_group or points.shape[1] < self.config.group_size:
            raise ValueError(
                f"clouds of {points.shape[1]} points are too small for num_group="
                f"{self.config.num_group}, group_size={self.config.group_size}"
            )
        return group_points(points, self.config.num_group, self.config.group_size, self.config.fps_start)

    def embed(self, neighbourhoods: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch tokens and their positional embeddings, both (B, G, C)."""
        tokens = self.encoder(neighbourhoods)
        if hasattr(self, "reduce_dim"):
            tokens = self.reduce_dim(tokens)
        return tokens, self.pos_embed(centres)

    def with_cls(self, tokens: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(batch, -1, -1), tokens], dim=1)
        return x, torch.cat([self.cls_pos.expand(batch, -1, -1), pos], dim=1)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Normalised tokens (B, 1 + G, C): the cls token first."""
        tokens, pos = self.embed(*self.group(points))
        x, pos = self.with_cls(tokens, pos)
        return self.norm(self.blocks(x, pos))

    @staticmethod
    def classification_feature(normed: torch.Tensor) -> torch.Tensor:
        """concat(cls token, max over patch tokens): (B, 2C)."""
        return torch.cat([normed[:, 0], normed[:, 1:].max(dim=1).values], dim=-1)


def build_cls_head(config: BackboneConfig, num_classes: int) -> nn.Sequential:
    """The published classification head (`cls_head_finetune`)."""
    width, hidden = 2 * config.trans_dim, config.head_hidden
    if config.head_style == "point_bert":
        return nn.Sequential(
            nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(hidden, num_classes)
        )
    return nn.Sequential(
        nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(hidden, num_classes),
    )


class FullFinetuneClassifier(PointMAEBackbone):
    """Backbone + published head, all trainable: the full fine-tune baseline.

    Same top-level names as the published fine-tune model, so a published
    fine-tuned checkpoint loads directly.
    """

    def __init__(self, config: BackboneConfig | None = None, num_classes: int = 15):
        super().__init__(config)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.cls_head_finetune = build_cls_head(self.config, num_classes)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        normed = super().forward(points)
        return self.cls_head_finetune(self.classification_feature(normed))
