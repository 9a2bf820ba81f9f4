"""Pre-trained weights handed to Ray workers through the object store.

The driver reads a checkpoint file once and puts its tensors (as numpy arrays) in
Ray's object store. Each node then holds one copy in shared memory, whatever the
number of tasks or workers it runs, and workers read it without copying. The file
only has to exist where the driver runs: workers on other machines need no shared
filesystem for it.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch

from ..engine.config import TrainConfig
from ..models.checkpoint import read_state_dict


def share_checkpoints(configs: Iterable[TrainConfig]) -> dict[str, object]:
    """An ObjectRef per distinct model.checkpoint among `configs` (read once each)."""
    import ray

    shared: dict[str, object] = {}
    for config in configs:
        path = config.model.checkpoint
        if path and path not in shared:
            state = read_state_dict(Path(path))
            # numpy arrays are read from the object store without a copy; numpy has no bfloat16.
            shared[path] = ray.put({key: t if t.dtype == torch.bfloat16 else t.numpy() for key, t in state.items()})
    return shared


def shared_tensors(shared: Optional[object]) -> Optional[dict[str, torch.Tensor]]:
    """The tensors behind a share_checkpoints ref, as read-only views of the node's copy.
    `shared`: the ref, or what it holds (Ray resolves a ref passed as a task argument)."""
    if shared is None:
        return None
    import ray

    arrays = ray.get(shared) if isinstance(shared, ray.ObjectRef) else shared
    with warnings.catch_warnings():
        # Object-store arrays are read-only; load_state_dict only copies out of them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return {key: torch.from_numpy(value) if isinstance(value, np.ndarray) else value
                for key, value in arrays.items()}
