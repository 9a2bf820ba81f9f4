"""`compile: true`: the model's forward through torch.compile, falling back to eager.

A Point-PEFT step on a GPU is bound by kernel launches (many small adapter and
attention kernels per block); compiling fuses them. The forward is replaced on
the module itself, so parameter names, state dicts, checkpoints and DDP wrapping
stay exactly as in eager mode. Grouping (FPS) runs eagerly inside the compiled
forward (see models/ops.py). Where compilation is unavailable or fails (no C++
compiler for the CPU backend, an unsupported platform), the first call says so
once and the run continues in eager mode with the same results.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn

BACKEND = "inductor"
logger = logging.getLogger(__name__)


class FallbackForward:
    """The compiled forward; on its first call, the eager one if compiling fails
    (`fell_back` then says why)."""

    def __init__(self, compiled: Callable, eager: Callable):
        self.compiled, self.eager = compiled, eager
        self.checked = False
        self.fell_back = ""

    def __call__(self, *args, **kwargs):
        if self.checked:
            return (self.eager if self.fell_back else self.compiled)(*args, **kwargs)
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any compiler failure; a real error recurs in eager mode
            cause = getattr(err, "inner_exception", None) or err.__cause__ or err
            first_line = (str(cause).strip().splitlines() or [""])[0]
            self.fell_back = (f"[compile] torch.compile unavailable here ({type(cause).__name__}: "
                              f"{first_line[:200]}); running eagerly")
            logger.warning(self.fell_back)
            out = self.eager(*args, **kwargs)
        self.checked = True
        return out


def compile_model(model: nn.Module, enabled: bool, backend: str | Callable | None = None) -> nn.Module:
    """The same module, its forward compiled when `enabled` (static shapes: one graph per
    batch shape, e.g. the training batch, the last partial batch, evaluation)."""
    if not enabled:
        return model
    backend = backend or BACKEND
    eager = model.forward
    compiled = torch.compile(eager, backend=backend, dynamic=False)
    model.forward = FallbackForward(compiled, eager)
    logger.info(f"[compile] {type(model).__name__}.forward compiled with torch.compile "
                f"({getattr(backend, '__name__', backend)})")
    return model
