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
