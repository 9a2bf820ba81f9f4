"""PointPEFTModel: a frozen Point-MAE backbone with Point-PEFT modules and a head.

The backbone module is left untouched (its names stay loadable from official
checkpoints); this model runs its own block loop that inserts the prompts and
the geometry-aware adapters around the frozen blocks.
"""
from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError, MemoryBankError
from ..backbone import Block, PointMAEBackbone, build_cls_head
from ..checkpoint import fingerprint_tensors
from ..ops import farthest_point_sample, gather_points, group_points
from .adapter_io import load_adapter, read_adapter_config, save_adapter
from .config import PointPEFTConfig
from .geometry import GeometryAwareAdapter, NeighbourhoodAttention, TokenGeometry, token_geometry
from .memory_bank import MemoryBank, build_memory_bank
from .prompt import PointPriorPrompt, retrieve_prompt_source

REFERENCE_NAME = "pretrained_reference"
BITFIT_SUFFIXES = ("norm1.bias", "norm2.bias", "attn.proj.bias", "mlp.fc1.bias", "mlp.fc2.bias")


def trainable_backbone_names(backbone: PointMAEBackbone, config: PointPEFTConfig) -> list[str]:
    """Backbone parameters that train under PEFT (docs/method.md, "What is trained"):
    BitFit biases, cls token/pos, final norm."""
    return [name for name, _ in backbone.named_parameters()
            if (config.train_bias and name.startswith("blocks.blocks.") and name.endswith(BITFIT_SUFFIXES))
            or (config.train_cls_token and name in ("cls_token", "cls_pos"))
            or (config.train_final_norm and name in ("norm.weight", "norm.bias"))]


def batchnorm_buffer_names(backbone: nn.Module) -> list[str]:
    """Running statistics of the frozen backbone's BatchNorm layers (they follow the
    downstream data when frozen_batchnorm='train')."""
    names = []
    for prefix, module in backbone.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            names += [f"{prefix}.{name}" for name, _ in module.named_buffers(recurse=False)]
    return names


@contextlib.contextmanager
def batchnorm_eval(module: nn.Module):
    """BatchNorm layers of `module` in eval mode for the block (running statistics, no update)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    modes = [m.training for m in norms]
    for m in norms:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(norms, modes):
            m.train(mode)


class _TensorStore(nn.Module):
    """Non-persistent buffers keyed by dotted names: moves with the model, never saved."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        super().__init__()
        self._names = list(tensors)
        for name, tensor in tensors.items():
            self.register_buffer(name.replace(".", "__"), tensor.detach().clone(), persistent=False)

    def get(self, name: str) -> torch.Tensor:
        return getattr(self, name.replace(".", "__"))

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        return {n[len(prefix):]: self.get(n) for n in self._names if n.startswith(prefix)}


class PointPEFTModel(nn.Module):
    def __init__(self, backbone: PointMAEBackbone, config: PointPEFTConfig, num_classes: int):
        super().__init__()
        bconf = backbone.config
        config.check_backbone(bconf.depth, bconf.num_group)
        if num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {num_classes}")
        self.peft_config = config
        self.num_classes = num_classes
        self.backbone = backbone
        dim = bconf.trans_dim
        self.prompt = PointPriorPrompt(dim, config) if config.uses_prompt else None
        self.neighbour_attention = None
        self.adapters = None
        if config.geometry_adapter:
            self.neighbour_attention = NeighbourhoodAttention(dim, config.neighbour_heads, config.neighbour_head_dim,
                                                              config.neighbour_scale)
            self.adapters = nn.ModuleList(GeometryAwareAdapter(dim, config) for _ in range(bconf.depth))
        self.cls_head_finetune = build_cls_head(bconf, num_classes)
        self.trainable_backbone = trainable_backbone_names(backbone, config)
        # Backbone tensors this adapter changes and saves: the trained ones, and the
        # BatchNorm running statistics where they follow the downstream data.
        self.tuned_backbone = self.trainable_backbone + (
            batchnorm_buffer_names(backbone) if config.frozen_batchnorm == "train" else [])
        tunable = set(trainable_backbone_names(backbone, PointPEFTConfig()))
        state = backbone.state_dict()
        # The bank and its queries must come from the weights as loaded, not as
        # tuned. The originals of every tunable tensor live on the backbone
        # itself, so later adapters sharing this backbone see the same ones.
        if not hasattr(backbone, REFERENCE_NAME):
            kept = sorted(tunable | set(batchnorm_buffer_names(backbone)))
            setattr(backbone, REFERENCE_NAME, _TensorStore({n: state[n] for n in kept}))
        # Tunable tensors stay out of the fingerprint: an adapter still matches
        # a backbone tuned by other adapters.
        self.backbone_fingerprint = fingerprint_tensors((k, v) for k, v in state.items() if k not in tunable)
        reference = fingerprint_tensors((k, v) for k, v in self.frozen_reference.tensors().items() if k in tunable)
        self.bank_fingerprint = hashlib.blake2b(f"{self.backbone_fingerprint}|{reference}".encode(),
                                                digest_size=16).hexdigest()
        self._freeze()
        for name in ("bank_rows", "bank_rows_normed", "bank_row_ids", "bank_query_features"):
            self.register_buffer(name, None, persistent=False)
        self.memory_bank: MemoryBank | None = None

    @property
    def frozen_reference(self) -> "_TensorStore":
        store = getattr(self.backbone, REFERENCE_NAME, None)
        if store is None:
            raise MemoryBankError("the backbone's weights were reloaded after get_peft_model; wrap it again")
        return store

    # ---- parameters -------------------------------------------------------
    def _freeze(self) -> None:
        trainable = set(self.trainable_backbone)
        for name, param in self.backbone.named_parameters():
            param.requires_grad_(name in trainable)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.peft_config.frozen_batchnorm == "eval":
            # Frozen BatchNorm keeps its running statistics.
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def trainable_parameter_groups(self) -> dict[str, int]:
        groups: dict[str, int] = {}
        for name, param in self.named_parameters():
            if param.requires_grad:
                group = "bitfit" if name.startswith("backbone.blocks.") else name.split(".")[0]
                group = "backbone_tokens_norm" if name.startswith("backbone.") and group != "bitfit" else group
                groups[group] = groups.get(group, 0) + param.numel()
        return groups

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return trainable, sum(p.numel() for p in self.parameters())

    def print_trainable_parameters(self) -> str:
        trainable, total = self.get_nb_trainable_parameters()
        line = f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"
        print(line)
        return line

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything PEFT owns: its modules, the head (with BN stats) and the trained backbone tensors."""
        keep = {f"backbone.{n}" for n in self.tuned_backbone}
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.") or k in keep}

    # ---- memory bank ------------------------------------------------------
    @torch.no_grad()
    def frozen_global_features(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(max, cls) global features of the pre-trained backbone, no PEFT, no drop path
        (cls is None for the pre-training encoder, which has no cls token)."""
        if self.peft_config.bank_encoder == "pretrain" or self.peft_config.frozen_batchnorm == "train":
            tokens, pos = self._reference_stem(points)
        else:
            tokens, pos, _ = self._frozen_stem(points)
        return self._frozen_features_from_tokens(tokens, pos)

    def _bank_num_group(self) -> int:
        conf = self.peft_config
        if conf.bank_encoder == "pretrain" and conf.bank_num_group is not None:
            return conf.bank_num_group
        return self.backbone.config.num_group

    def _reference_stem(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch tokens and positions from the pre-trained weights as loaded (BatchNorm
        on its pre-trained running statistics), with the bank encoder's grouping."""
        conf = self.backbone.config
        groups = self._bank_num_group()
        if points.shape[1] < max(groups, conf.group_size):
            raise ValueError(f"clouds of {points.shape[1]} points are too small for the bank encoder "
                             f"(bank_num_group={groups}, group_size={conf.group_size})")
        neighbourhoods, centres = group_points(points, groups, conf.group_size, conf.fps_start)
        buffers = self.frozen_reference.tensors(prefix="encoder.")
        with batchnorm_eval(self.backbone.encoder):
            tokens = torch.func.functional_call(self.backbone.encoder, buffers, (neighbourhoods,), strict=False)
        if hasattr(self.backbone, "reduce_dim"):
            tokens = self.backbone.reduce_dim(tokens)
        return tokens, self.backbone.pos_embed(centres)

    def _frozen_features_from_tokens(self, tokens: torch.Tensor, pos: torch.Tensor):
        ref = self.frozen_reference
        with_cls = self.peft_config.bank_encoder == "finetune"
        x = tokens
        if with_cls:
            batch = tokens.shape[0]
            x = torch.cat([ref.get("cls_token").expand(batch, -1, -1), tokens], dim=1)
            pos = torch.cat([ref.get("cls_pos").expand(batch, -1, -1), pos], dim=1)
        block_params = ref.tensors(prefix="blocks.")
        x = torch.func.functional_call(self.backbone.blocks, block_params, (x, pos), {"stochastic_depth": False})
        norm = self.backbone.norm
        x = F.layer_norm(x, norm.normalized_shape, ref.get("norm.weight"),
                         ref.get("norm.bias"), norm.eps)
        if not with_cls:
            return x.max(dim=1).values, None
        return x[:, 1:].max(dim=1).values, x[:, 0]

    def build_memory_bank(self, batches, cache_dir: str | Path | None = None, dataset_key: str | None = None,
                          progress: bool = True) -> MemoryBank:
        """Build (or load from cache) the bank over the training batches, then attach it."""
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        try:
            bank = build_memory_bank(
                self.frozen_global_features, batches,
                backbone_fingerprint=self.bank_fingerprint, grouping=self.grouping_key(),
                cache_dir=cache_dir, dataset_key=dataset_key, device=device, progress=progress,
            )
        finally:
            self.train(was_training)
        self.attach_memory_bank(bank)
        return bank

    def grouping_key(self) -> dict:
        conf = self.backbone.config
        key = {"num_group": conf.num_group, "group_size": conf.group_size, "fps_start": conf.fps_start}
        if self.peft_config.bank_encoder == "pretrain":
            key.update(encoder="pretrain", num_group=self._bank_num_group())
        return key

    def attach_memory_bank(self, bank: MemoryBank) -> None:
        config = self.peft_config
        if bank.dim != self.backbone.config.trans_dim:
            raise MemoryBankError(f"memory bank width {bank.dim} != backbone trans_dim {self.backbone.config.trans_dim}")
        if bank.key.get("backbone") not in (None, self.bank_fingerprint):
            raise MemoryBankError("memory bank was built with different backbone weights; rebuild it")
        rows = bank.select_rows(config.bank_size, config.bank_sampling, config.bank_source, config.bank_seed)
        usable = len(rows) - int(config.exclude_self)
        if config.uses_bank and config.top_k > usable:
            raise MemoryBankError(f"top_k ({config.top_k}) > usable bank rows ({usable}) of a bank of {len(bank)} samples")
        device = next(self.parameters()).device
        features = bank.features(config.bank_source).to(device)  # names the problem if the bank lacks it
        self.bank_query_features = features
        self.bank_rows = features[rows.to(device)]
        self.bank_rows_normed = F.normalize(self.bank_rows, dim=-1)
        self.bank_row_ids = rows.to(device)
        self.memory_bank = bank

    # ---- forward ----------------------------------------------------------
    def _frozen_stem(self, points: torch.Tensor):
        """Grouping, patch tokens and positions: frozen, so computed without autograd."""
        with torch.no_grad():
            neighbourhoods, centres = self.backbone.group(points)
            tokens, pos = self.backbone.embed(neighbourhoods, centres)
        return tokens, pos, centres

    def forward(self, points: torch.Tensor, sample_index: torch.Tensor | None = None) -> torch.Tensor:
        """points (B, N, 3) -> logits (B, K). `sample_index`: each sample's row in
        the training set, needed while training with a memory bank (cached query,
        self-exclusion)."""
        tokens, pos, centres = self._frozen_stem(points)
        geometry = token_geometry(centres, self.peft_config) if self.adapters is not None else None
        prompt_geometry = self._prompt_geometry(points)
        source = self._prompt_source(points, tokens, pos, sample_index)
        x, pos = self.backbone.with_cls(tokens, pos)
        for index, block in enumerate(self.backbone.blocks.blocks):
            # prompt_geometry exists only with prompts, and serves the prompted blocks
            block_geometry = prompt_geometry if prompt_geometry is not None and index < self.prompt.depth else geometry
            x = self._run_block(index, block, x + pos, source, block_geometry)
        feature = self.backbone.classification_feature(self.backbone.norm(x))
        return self.cls_head_finetune(feature)

    def _prompt_geometry(self, points: torch.Tensor) -> TokenGeometry | None:
        """Published `prompt_cor`: the prompts' coordinates join the points, that cloud
        is grouped again, and the prompted blocks take their neighbourhoods from its
        centres over the rows [prompts, patches]."""
        if self.adapters is None or self.prompt is None or self.prompt.coordinates is None:
            return None
        conf, bconf = self.peft_config, self.backbone.config
        batch, length = points.shape[0], self.prompt.length
        coordinates = self.prompt.coordinates.to(points.dtype).unsqueeze(0).expand(batch, -1, -1)
        cloud = torch.cat([coordinates, points], dim=1)
        with torch.no_grad():
            centre_idx = farthest_point_sample(cloud.detach(), bconf.num_group, start=bconf.fps_start)
        centres = gather_points(cloud, centre_idx)  # keeps the graph to the coordinates
        rows = bconf.num_group + length
        stride = bconf.num_group if conf.prompt_row_offset == "published" else rows
        return token_geometry(centres, conf, rows_per_sample=rows, sample_stride=stride, over_prompts=True)

    def _run_block(self, index: int, block: Block, x: torch.Tensor, source, geometry) -> torch.Tensor:
        prompted = self.prompt is not None and index < self.prompt.depth
        published_drop = self.peft_config.drop_path_style == "published"
        start = 1
        if prompted:
            prompts = self.prompt.prompts_for(index, x.shape[0], source).to(x.dtype)
            x = torch.cat([x[:, :1], prompts, x[:, 1:]], dim=1)
            start += prompts.shape[1]
        attention = block.attention_branch(x)
        x = x + (attention if published_drop else block.drop_path(attention))
        mlp_out = block.mlp_branch(x)
        if published_drop:
            # Published: drop-path on the MLP output, then the adapter beside it.
            mlp_out = block.drop_path(mlp_out)
        adapter = self.adapters[index] if self.adapters is not None else None
        if adapter is not None:
            mlp_out = adapter.parallel_to_mlp(mlp_out)
        x = x + (mlp_out if published_drop else block.drop_path(mlp_out))
        if adapter is not None:
            rows = x[:, 1:] if geometry.over_prompts else x[:, start:]
            drop = block.drop_path if published_drop else None
            patches = adapter.aggregate(rows, x[:, start:], geometry, self.neighbour_attention, drop)
            x = adapter.out_adapter(torch.cat([x[:, :start], patches], dim=1))
        if prompted:  # deep prompts are dropped at the end of their block
            x = torch.cat([x[:, :1], x[:, start:]], dim=1)
        return x

    def _prompt_source(self, points, tokens, pos, sample_index) -> torch.Tensor | None:
        conf = self.peft_config
        if not conf.uses_bank:
            return None
        if self.bank_rows is None:
            raise MemoryBankError(
                "no memory bank attached: call model.build_memory_bank(train_batches) or "
                "model.attach_memory_bank(bank) first, or set memory_bank=False"
            )
        excluded = None
        if self.training and conf.exclude_self:
            if sample_index is None:
                raise MemoryBankError(
                    "training with a memory bank needs sample_index (each sample's row in the training "
                    "set) to exclude self-matches; pass sample_index=... or set exclude_self=False"
                )
            sample_index = sample_index.to(self.bank_row_ids.device)
            excluded = sample_index.unsqueeze(1) == self.bank_row_ids.unsqueeze(0)
        query = self._query(points, tokens, pos, sample_index)
        return retrieve_prompt_source(
            query, self.bank_rows, self.bank_rows_normed, conf.top_k, conf.temperature,
            conf.bank_normalize, excluded,
        )

    def _query(self, points, tokens, pos, sample_index) -> torch.Tensor:
        conf = self.peft_config
        if self.training and conf.bank_query == "cached" and sample_index is not None:
            return self.bank_query_features[sample_index.to(self.bank_query_features.device)]
        with torch.no_grad():
            if conf.bank_encoder == "pretrain" or conf.frozen_batchnorm == "train":
                # Not the stem's tokens: those came from another grouping, or from
                # BatchNorm on batch statistics; the bank holds neither.
                max_feat, cls_feat = self.frozen_global_features(points)
            else:
                max_feat, cls_feat = self._frozen_features_from_tokens(tokens, pos)
        return max_feat if conf.bank_source == "max" else cls_feat

    # ---- save / load --------------------------------------------------------
    def save_adapter(self, directory: str | Path, include_memory_bank: bool = True) -> Path:
        return save_adapter(self, directory, include_memory_bank)

    def load_adapter(self, directory: str | Path) -> None:
        load_adapter(self, directory)

    @classmethod
    def from_adapter(cls, backbone: PointMAEBackbone, directory: str | Path) -> "PointPEFTModel":
        meta = read_adapter_config(directory)
        model = cls(backbone, PointPEFTConfig(**meta["peft_config"]), meta["num_classes"])
        model.load_adapter(directory)
        return model


def get_peft_model(backbone: PointMAEBackbone, peft_config: PointPEFTConfig | None = None,
                   num_classes: int = 15) -> PointPEFTModel:
    """Wrap a (pre-trained) backbone with Point-PEFT modules; the backbone is frozen.

    Load the pre-trained weights into the backbone before calling this: the
    memory bank and its queries use the weights as they are now.
    """
    if not isinstance(backbone, PointMAEBackbone):
        raise TypeError(f"get_peft_model expects a PointMAEBackbone, got {type(backbone).__name__}")
    return PointPEFTModel(backbone, peft_config or PointPEFTConfig(), num_classes)
