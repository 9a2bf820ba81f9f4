"""Point-prior Prompt (docs/method.md, "Point-prior Prompt"): learnable deep prompts
enriched from a memory bank through parameter-free attention."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import PointPEFTConfig
from .layers import BottleneckAdapter


def retrieve_prompt_source(
    query: torch.Tensor,
    bank: torch.Tensor,
    bank_normed: torch.Tensor,
    top_k: int,
    temperature: float,
    normalize: bool,
    excluded: torch.Tensor | None = None,
) -> torch.Tensor:
    """Parameter-free attention over the bank.

    query (B, C); bank (R, C) raw rows; bank_normed (R, C) unit rows (used when
    `normalize`, else the unit query scores the raw rows as published); excluded
    (B, R) bool marks rows a sample must not retrieve (itself, while training).
    Returns the prompt source (B, 2 + top_k, C) = [query, retrieved, top-k rows].
    """
    # The query is always unit length; the fix also normalises the bank rows
    # (cosine similarity), the published code scores against the raw rows.
    unit_query = F.normalize(query.float(), dim=-1)
    scores = unit_query @ (bank_normed if normalize else bank).float().T
    if excluded is not None:
        scores = scores.masked_fill(excluded, float("-inf"))
    top = scores.topk(top_k, dim=-1)
    weights = torch.softmax(top.values / temperature, dim=-1)
    rows = bank[top.indices]  # gathered on device: (B, K, C)
    retrieved = (weights.unsqueeze(-1).to(rows.dtype) * rows).sum(dim=1)
    return torch.cat([query.unsqueeze(1).to(rows.dtype), retrieved.unsqueeze(1), rows], dim=1)


class PointPriorPrompt(nn.Module):
    """Per-block prompt tokens for the first L blocks, each block with its own
    adapter that maps the bank-derived prompt source onto the prompts."""

    def __init__(self, dim: int, config: PointPEFTConfig):
        super().__init__()
        self.length = config.prompt_length
        self.depth = config.prompt_depth
        self.tokens = nn.Parameter(torch.empty(self.depth, self.length, dim))
        nn.init.trunc_normal_(self.tokens, std=config.prompt_init_std)
        self.source_adapters = (
            nn.ModuleList(
                BottleneckAdapter(dim, config.prompt_adapter_width, residual=True, init=config.adapter_init,
                                  dropout=config.adapter_dropout)
                for _ in range(self.depth))
            if config.uses_bank
            else None
        )
        if config.prompt_coordinates:
            # Where the prompts sit among the points (published `prompt_cor`).
            self.coordinates = nn.Parameter(torch.empty(self.length, 3))
            nn.init.trunc_normal_(self.coordinates, std=0.02)
        else:
            self.coordinates = None
        self.dropout = nn.Dropout(config.prompt_dropout)
        self.dropout_tokens_only = config.prompt_dropout_on == "tokens"

    def prompts_for(self, block_index: int, batch: int, source: torch.Tensor | None) -> torch.Tensor:
        """Prompt tokens (B, P, C) for one block."""
        prompts = self.tokens[block_index].unsqueeze(0).expand(batch, -1, -1)
        if self.dropout_tokens_only:
            prompts = self.dropout(prompts)
        if source is not None and self.source_adapters is not None:
            prompts = prompts + self._pad(self.source_adapters[block_index](source))
        return prompts if self.dropout_tokens_only else self.dropout(prompts)

    def _pad(self, source: torch.Tensor) -> torch.Tensor:
        # K + 2 source rows may be fewer than P tokens: the rest get no source.
        missing = self.length - source.shape[1]
        return F.pad(source, (0, 0, 0, missing)) if missing > 0 else source
