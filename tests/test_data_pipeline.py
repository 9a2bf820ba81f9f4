"""Arrow cache, batch loader and transforms."""
import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from pointpeft_ray.data.cache import load_or_build, read_split, write_split
from pointpeft_ray.data.loader import BatchLoader
from pointpeft_ray.data.split import PointSplit
from pointpeft_ray.data.transforms import (NormalizeUnitSphere, RotateUp, ScaleTranslate, Subsample,
                                           build_augmentation, voting_views)
from pointpeft_ray.errors import DataFormatError
from pointpeft_ray.models.ops import farthest_point_sample


def make_split(n=20, points=64, classes=3, seed=0, **extras):
    rng = np.random.default_rng(seed)
    return PointSplit(rng.normal(size=(n, points, 3)).astype(np.float32), np.arange(n) % classes,
                      [f"class{i}" for i in range(classes)], name="toy:train", extras=extras)


# ---- PointSplit validation ------------------------------------------------------------

def test_split_rejects_bad_values_with_counts():
    good = make_split()
    pts = good.points.copy()
    pts[3, 5, 1] = np.nan
    pts[7, 0, 0] = np.inf
    with pytest.raises(DataFormatError, match="2 of 20 samples hold NaN/inf points"):
        PointSplit(pts, good.labels, good.class_names, source="file.h5")
    with pytest.raises(DataFormatError, match=r"file.h5: 1 labels outside 0..2 \(found 0..5\)"):
        PointSplit(good.points, np.r_[good.labels[:-1], 5], good.class_names, source="file.h5")
    with pytest.raises(DataFormatError, match="empty"):
        PointSplit(np.zeros((0, 4, 3)), np.zeros(0), ["a"])
    with pytest.raises(DataFormatError, match="20 point clouds but 19 labels"):
        PointSplit(good.points, good.labels[:-1], good.class_names)
    with pytest.raises(DataFormatError, match=r"\(samples, points, 3\)"):
        PointSplit(np.zeros((2, 4, 6)), np.zeros(2), ["a"])


# ---- Arrow cache -------------------------------------------------------------------

def test_cache_roundtrip_is_memory_mapped_and_readable_by_plain_pyarrow(tmp_path):
    data = make_split(mask=np.ones((20, 64), dtype=np.int8))
    path = write_split(data, tmp_path / "toy.arrow", {"k": 1})
    back = read_split(path)
    assert np.array_equal(back.points, data.points) and np.array_equal(back.labels, data.labels)
    assert back.class_names == data.class_names and back.extras["mask"].shape == (20, 64)
    assert not back.points.flags.writeable  # a zero-copy view of the mapped file
    table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    assert table.num_rows == 20 and pa.types.is_fixed_size_list(table.schema.field("points").type)
    assert table.schema.field("points").type.list_size == 64 * 3


def test_cache_builds_once_and_rebuilds_on_key_change_or_damage(tmp_path, caplog):
    calls = []

    def build():
        calls.append(1)
        return make_split(seed=len(calls))

    path = tmp_path / "t" / "train-x.arrow"
    first, cached = load_or_build(path, {"v": 1}, build)
    assert not cached and len(calls) == 1
    second, cached = load_or_build(path, {"v": 1}, build)
    assert cached and len(calls) == 1 and np.array_equal(first.points, second.points)
    _, cached = load_or_build(path, {"v": 2}, build)  # another key under this name: rebuilt
    assert not cached and len(calls) == 2
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
    with caplog.at_level("WARNING"):
        _, cached = load_or_build(path, {"v": 2}, build)
    assert not cached and len(calls) == 3
    assert [r.getMessage() for r in caplog.records if "unreadable split cache" in r.getMessage()]  # said, once
    assert [p.name for p in path.parent.iterdir() if p.suffix == ".tmp"] == []


def test_failed_build_leaves_no_cache_file(tmp_path):
    path = tmp_path / "train-y.arrow"

    def broken():
        raise DataFormatError("source missing")

    with pytest.raises(DataFormatError):
        load_or_build(path, {"v": 1}, broken)
    assert not path.exists()


# ---- loader ------------------------------------------------------------------------

def test_loader_covers_every_sample_once_and_is_seeded():
    data = make_split(n=50)
    loader = BatchLoader(data, 8, shuffle=True, seed=3)
    seen = np.concatenate([b.index.numpy() for b in loader])
    assert sorted(seen.tolist()) == list(range(50)) and len(loader) == 7
    batch = next(iter(loader))
    assert torch.equal(batch.labels, torch.from_numpy(data.labels[batch.index.numpy()]))
    assert torch.equal(batch.points, torch.from_numpy(data.points[batch.index.numpy()]))
    again = np.concatenate([b.index.numpy() for b in BatchLoader(data, 8, shuffle=True, seed=3)])
    assert np.array_equal(seen, again)
    loader.set_epoch(1)
    assert not np.array_equal(seen, np.concatenate([b.index.numpy() for b in loader]))


def test_loader_shards_for_ranks_and_drops_last():
    data = make_split(n=50)
    shards = [np.concatenate([b.index.numpy() for b in BatchLoader(data, 5, shuffle=True, rank=r, world_size=3)])
              for r in range(3)]
    assert all(len(s) == math.ceil(50 / 3) for s in shards)
    assert set(np.concatenate(shards).tolist()) == set(range(50))
    loader = BatchLoader(data, 8, drop_last=True)
    assert len(loader) == 6 and all(b.points.shape[0] == 8 for b in loader)


# ---- transforms --------------------------------------------------------------------

def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_scale_translate_ranges():
    pts = torch.ones(64, 10, 3)
    out = ScaleTranslate()(pts, gen())
    # each cloud: one scale per axis in [2/3, 3/2], one shift in [-0.2, 0.2]
    per_cloud = out[:, 0]
    assert torch.all(out == per_cloud.unsqueeze(1))
    assert per_cloud.min() >= 2 / 3 - 0.2 - 1e-6 and per_cloud.max() <= 1.5 + 0.2 + 1e-6


def test_rotation_is_about_the_up_axis():
    pts = torch.randn(16, 100, 3)
    out = RotateUp()(pts, gen())
    assert torch.allclose(out[..., 1], pts[..., 1])
    assert torch.allclose(out.norm(dim=-1), pts.norm(dim=-1), atol=1e-5)
    assert not torch.allclose(out, pts)


def test_subsample_methods():
    pts = torch.randn(4, 100, 3)
    rand = Subsample(30, "random")(pts, gen())
    assert rand.shape == (4, 30, 3)
    for b in range(4):  # every kept point comes from its own cloud
        assert all((pts[b] == p).all(-1).any() for p in rand[b])
    fps = Subsample(20, "fps")(pts, gen())
    idx = farthest_point_sample(pts, 20)
    assert torch.equal(fps, torch.gather(pts, 1, idx.unsqueeze(-1).expand(-1, -1, 3)))
    assert torch.equal(Subsample(10, "first")(pts, gen()), pts[:, :10])
    with pytest.raises(ValueError, match="asked for 200"):
        Subsample(200)(pts, gen())


def test_unit_sphere_and_voting_and_unknown_augmentation():
    pts = torch.randn(3, 50, 3) * 5 + 2
    unit = NormalizeUnitSphere()(pts)
    assert torch.allclose(unit.mean(1), torch.zeros(3, 3), atol=1e-5)
    assert torch.allclose(unit.norm(dim=-1).amax(1), torch.ones(3))
    views = voting_views(pts, 4, build_augmentation("scale_translate"), gen())
    assert len(views) == 4 and torch.equal(views[0], pts) and not torch.equal(views[1], pts)
    with pytest.raises(ValueError, match="unknown augmentation 'shear'"):
        build_augmentation("shear")
