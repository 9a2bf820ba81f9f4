"""PointPEFTConfig: every Point-PEFT knob.

Kept separate from the code that injects modules (as in HF PEFT), so a search
space can refer to these field names and a saved adapter carries its config.
The sizes default to the published ones; where our code differs from the
published code in behaviour, a field names the difference and
`PointPEFTConfig.published()` (`preset: published`) selects the published
behaviour for all of them (docs/method.md, "Differences from the published
code", lists each with its measured effect).
"""
from __future__ import annotations

from typing import Any, Literal, Mapping, Optional

from pydantic import Field, model_validator

from ...configuration import StrictConfig
from ...errors import ConfigError


class PointPEFTConfig(StrictConfig):
    # Left out of dumps: the fields it fills in say everything (an adapter's saved config is its
    # fields); a TrainConfig's dump keeps it where the config names it.
    preset: Literal["ours", "published"] = Field(
        "ours", exclude=True, description="the behaviour switches the fields below do not set: ours, or "
        "published (the published code's behaviour, PUBLISHED_BEHAVIOUR)")

    # Point-prior Prompt (docs/method.md, "Point-prior Prompt")
    prompt_length: int = Field(10, ge=0, le=256, description="P: prompt tokens per prompted block (0 = no prompt)")
    prompt_depth: int = Field(6, ge=0, description="L: prompted blocks, counted from the first")
    prompt_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    prompt_dropout_on: Literal["prompt", "tokens"] = Field(
        "prompt", description="dropout on the whole prompt (tokens + bank term), or on the learnable tokens "
        "alone before the bank term is added (published)")
    prompt_coordinates: bool = Field(
        False, description="published: P learnable xyz coordinates joined to the points before grouping; the "
        "prompted blocks take their adapter neighbourhoods from that grouping over [prompts, patches]")
    prompt_row_offset: Literal["per_sample", "published"] = Field(
        "per_sample", description="with prompt_coordinates: rows of sample b start at b*(G+P) (fix) or at b*G, "
        "as published, so later samples read their neighbours' rows")
    prompt_init_std: float = Field(0.02, gt=0.0)
    prompt_adapter_width: int = Field(8, ge=1, description="bottleneck of the prompt adapter (C -> w -> C)")
    memory_bank: bool = Field(True, description="enrich prompts from the training-set memory bank")
    top_k: int = Field(8, ge=1, description="K: bank rows retrieved per sample (K <= P - 2)")
    temperature: float = Field(1.0, gt=0.0, description="T: softmax temperature of the retrieval weights")
    bank_size: Optional[int] = Field(None, ge=2, description="rows kept in the bank; None = every training sample")
    bank_sampling: Literal["random", "fps"] = Field("random", description="how a smaller bank is subsampled")
    bank_source: Literal["max", "cls"] = Field("max", description="global feature stored: max-pooled tokens or cls")
    bank_query: Literal["cached", "frozen_pass"] = Field(
        "cached",
        description="query feature while training: the sample's cached bank feature (no extra pass), "
        "or a frozen backbone pass on the augmented points (published)",
    )
    bank_normalize: bool = Field(
        True, description="cosine similarity (fix); False = published: unit-length query . raw bank rows")
    bank_encoder: Literal["finetune", "pretrain"] = Field(
        "finetune", description="bank features and queries from the fine-tune grouping with the cls token, or "
        "from the pre-training encoder (no cls token, bank_num_group patches, max over tokens; published)")
    bank_num_group: Optional[int] = Field(
        None, ge=2, description="patches of the pretrain bank encoder; None = the backbone's num_group")
    exclude_self: bool = Field(True, description="while training, a sample never retrieves itself (fix)")
    bank_seed: int = 0

    # Geometry-aware Adapter (docs/method.md, "Geometry-aware Adapter")
    geometry_adapter: bool = True
    adapter_dim: int = Field(16, ge=1, description="r: bottleneck width of the adapters")
    adapter_init: Literal["zero", "xavier"] = Field(
        "zero", description="zero: adapters start as identity/zero (up-projection zeroed); xavier: "
        "Xavier-uniform weights, N(0, 1e-6) biases (published)")
    adapter_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout inside each bottleneck (published 0.1)")
    mlp_adapter_scale: float = Field(0.7, description="a: weight of the adapter parallel to the MLP")
    centre_scale: float = Field(0.3, description="c: weight of the sub-centre's own token")
    propagate_scale: float = Field(0.3, description="p: weight of the propagated neighbourhood feature")
    num_subcentres: Optional[int] = Field(None, ge=1, description="second-level FPS centres; None = num_group / 2")
    neighbours: int = Field(16, ge=1, description="k: tokens per sub-centre neighbourhood")
    neighbour_heads: int = Field(6, ge=1)
    neighbour_head_dim: int = Field(3, ge=1)
    neighbour_scale: Literal["head_dim", "total_dim"] = Field(
        "head_dim", description="attention scale head_dim^-0.5, or (heads*head_dim)^-0.5 (published 18^-0.5)")
    pooling: Literal["max", "max_mean"] = "max"
    propagation: Literal["inverse_distance", "inverse_square"] = Field(
        "inverse_distance", description="propagation weights 1/(d + 1e-8), or 1/(d^2 + 1e-8) (published, PointNet++)")
    interp_neighbours: Optional[int] = Field(
        3, ge=1, description="sub-centres used by propagation; None = all of them (published)")
    drop_path_style: Literal["ours", "published"] = Field(
        "ours", description="ours: drop-path on the attention and on the MLP + adapter branch; published: none on "
        "attention, on the MLP before its adapter, and on the neighbourhood attention")
    frozen_batchnorm: Literal["eval", "train"] = Field(
        "eval", description="the frozen patch encoder's BatchNorm while training: running statistics (eval), or "
        "batch statistics with running statistics following the downstream data (train; published)")

    # What else trains besides the PEFT modules and the head
    train_bias: bool = Field(True, description="BitFit: biases of norm1, norm2, attn.proj, mlp.fc1, mlp.fc2")
    train_cls_token: bool = True
    train_final_norm: bool = True

    @model_validator(mode="before")
    @classmethod
    def _preset_under_fields(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("preset") in PEFT_PRESETS:
            return {**PEFT_PRESETS[data["preset"]], **data}
        return data

    @model_validator(mode="after")
    def _consistent(self):
        if self.memory_bank and self.prompt_length and self.top_k > self.prompt_length - 2:
            raise ValueError(
                f"top_k ({self.top_k}) must be <= prompt_length - 2 ({self.prompt_length - 2}): "
                "the prompt source is [query, retrieved, top_k rows]"
            )
        if self.memory_bank and self.prompt_length == 0:
            raise ValueError("memory_bank=True needs prompt_length >= 3 (the bank feeds the prompts)")
        if self.bank_size is not None and self.memory_bank and self.top_k > self.bank_size - int(self.exclude_self):
            raise ValueError(f"top_k ({self.top_k}) is larger than the usable bank (bank_size={self.bank_size})")
        if self.bank_encoder == "pretrain" and self.bank_source == "cls":
            raise ValueError("bank_source='cls' needs bank_encoder='finetune': the pre-training encoder has no cls token")
        if self.prompt_coordinates and not self.uses_prompt:
            raise ValueError("prompt_coordinates=True needs prompts (prompt_length and prompt_depth >= 1)")
        if self.num_subcentres is not None and self.neighbours > self.num_subcentres:
            raise ValueError(
                f"neighbours ({self.neighbours}) must be <= num_subcentres ({self.num_subcentres})"
            )
        return self

    @classmethod
    def published(cls, **changes) -> "PointPEFTConfig":
        """Every behaviour as the published code has it (sizes from `changes` or the defaults)."""
        return cls(**{"preset": "published", **changes})

    @property
    def uses_prompt(self) -> bool:
        return self.prompt_length > 0 and self.prompt_depth > 0

    @property
    def uses_bank(self) -> bool:
        return self.uses_prompt and self.memory_bank

    def subcentres_for(self, num_group: int) -> int:
        return self.num_subcentres if self.num_subcentres is not None else max(1, num_group // 2)

    def check_backbone(self, depth: int, num_group: int) -> None:
        """Combinations that need the backbone's shape; raised when the model is built."""
        if self.prompt_depth > depth:
            raise ConfigError(f"PointPEFTConfig: prompt_depth ({self.prompt_depth}) > backbone depth ({depth})")
        subcentres = self.subcentres_for(num_group)
        if self.geometry_adapter:
            if subcentres > num_group:
                raise ConfigError(
                    f"PointPEFTConfig: num_subcentres ({subcentres}) > backbone num_group ({num_group})"
                )
            if self.neighbours > subcentres:
                raise ConfigError(
                    f"PointPEFTConfig: neighbours ({self.neighbours}) must be <= the sub-centre count "
                    f"({subcentres} = num_subcentres or num_group / 2)"
                )
            if self.interp_neighbours is not None and self.interp_neighbours > subcentres:
                raise ConfigError(
                    f"PointPEFTConfig: interp_neighbours ({self.interp_neighbours}) > sub-centre count ({subcentres})"
                )


# The published code's behaviour, switch by switch (sizes are left to the caller:
# the defaults are the published sizes, the small presets scale them).
PUBLISHED_BEHAVIOUR: dict = {
    "prompt_dropout_on": "tokens",
    "prompt_coordinates": True,
    "prompt_row_offset": "published",
    "bank_normalize": False,
    "exclude_self": False,
    "bank_query": "frozen_pass",
    "bank_encoder": "pretrain",
    "bank_num_group": 64,
    "adapter_init": "xavier",
    "adapter_dropout": 0.1,
    "neighbour_scale": "total_dim",
    "propagation": "inverse_square",
    "interp_neighbours": None,
    "drop_path_style": "published",
    "frozen_batchnorm": "train",
}

PEFT_PRESETS: dict[str, dict] = {"ours": {}, "published": PUBLISHED_BEHAVIOUR}
