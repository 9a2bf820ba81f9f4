"""Small building blocks shared by the PEFT modules."""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class BottleneckAdapter(nn.Module):
    """C -> width -> C with QuickGELU (and dropout before the up-projection);
    `residual` adds the input back."""

    def __init__(self, dim: int, width: int, residual: bool, init: Literal["zero", "xavier"] = "zero",
                 dropout: float = 0.0):
        super().__init__()
        self.down = nn.Linear(dim, width)
        self.act = QuickGELU()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(width, dim)
        self.residual = residual
        if init == "zero":
            # Starts as the identity (or zero) so the frozen backbone's behaviour is
            # the starting point; small init on `down` lets gradients flow at once.
            nn.init.trunc_normal_(self.down.weight, std=0.02)
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)
        elif init == "xavier":  # the published adapters' init
            for linear in (self.down, self.up):
                nn.init.xavier_uniform_(linear.weight)
                nn.init.normal_(linear.bias, std=1e-6)
        else:  # a public layer: built directly, its init is not checked by a config
            raise ValueError(f"BottleneckAdapter: init must be 'zero' or 'xavier', got {init!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.up(self.dropout(self.act(self.down(x))))
        return x + out if self.residual else out
