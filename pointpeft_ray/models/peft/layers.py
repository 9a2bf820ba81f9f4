"""Small building blocks shared by the PEFT modules."""
from __future__ import annotations

import torch
from torch import nn


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class BottleneckAdapter(nn.Module):
    """C -> width -> C with QuickGELU; `residual` adds the input back."""

    def __init__(self, dim: int, width: int, residual: bool):
        super().__init__()
        self.down = nn.Linear(dim, width)
        self.act = QuickGELU()
        self.up = nn.Linear(width, dim)
        self.residual = residual
        # Starts as the identity (or zero) so the frozen backbone's behaviour is
        # the starting point; small init on `down` lets gradients flow at once.
        nn.init.trunc_normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.up(self.act(self.down(x)))
        return x + out if self.residual else out
