import logging
from contextlib import contextmanager

import pytest
import torch

from pointpeft_ray.models import BackboneConfig

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture
def tiny_config():
    return BackboneConfig(trans_dim=64, depth=3, num_heads=4, num_group=16, group_size=8,
                          encoder_dims=64, drop_path_rate=0.1)


def random_clouds(batch, points, seed, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, points, 3, generator=gen) * 2 - 1).to(device)


@pytest.fixture(scope="session")
def local_ray():
    """One Ray for the whole session (starting it costs seconds), on loopback only."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)
    yield ray
    ray.shutdown()


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@contextmanager
def logged():
    """The messages of the `pointpeft_ray` loggers at INFO and above inside the block, in
    order (usable where caplog is not: module-scoped fixtures)."""
    logger = logging.getLogger("pointpeft_ray")
    handler, level = _Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def log_messages():
    """What the package logs during the test (a list that grows as it runs)."""
    with logged() as messages:
        yield messages
