"""Grouping ops against brute-force references written as plain loops."""
import pytest
import torch

from pointpeft_ray.models.ops import farthest_point_sample, gather_points, group_points, knn_indices


def reference_fps(cloud, m, first=0, min_norm_sq=1e-3):
    """The published CUDA kernel's rules as a plain loop over one cloud."""
    n = cloud.shape[0]
    temp = [1e10] * n
    chosen = [first]
    old = first
    for _ in range(1, m):
        best, besti = -1.0, 0
        for k in range(n):
            x, y, z = (float(v) for v in cloud[k, :3])
            if min_norm_sq > 0 and x * x + y * y + z * z <= min_norm_sq:
                continue
            d = float(((cloud[k] - cloud[old]) ** 2).sum())
            temp[k] = min(d, temp[k])
            if temp[k] > best:
                best, besti = temp[k], k
        chosen.append(besti)
        old = besti
    return chosen


def make_cloud(n, seed, duplicates=0, near_origin=0):
    gen = torch.Generator().manual_seed(seed)
    cloud = torch.rand(n, 3, generator=gen) * 2 - 1
    if duplicates:
        src = torch.randint(n, (duplicates,), generator=gen)
        dst = torch.randint(n, (duplicates,), generator=gen)
        cloud[dst] = cloud[src]
    if near_origin:
        idx = torch.randint(1, n, (near_origin,), generator=gen)
        cloud[idx] = cloud[idx] * 0.01
    return cloud


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fps_matches_published_kernel_rules(seed, device):
    clouds = torch.stack([make_cloud(200, seed * 10 + i, duplicates=30, near_origin=10) for i in range(3)])
    got = farthest_point_sample(clouds.to(device), 40).cpu()
    for b in range(3):
        assert got[b].tolist() == reference_fps(clouds[b], 40)


def test_fps_without_origin_rule_and_all_duplicates():
    cloud = make_cloud(64, 5)
    got = farthest_point_sample(cloud[None], 16, min_norm_sq=0.0)[0]
    assert got.tolist() == reference_fps(cloud, 16, min_norm_sq=0.0)
    same = torch.ones(1, 10, 3)  # every point identical: ties go to the lowest index
    assert farthest_point_sample(same, 4)[0].tolist() == [0, 0, 0, 0]


def test_fps_selects_distinct_points_until_exhausted():
    cloud = make_cloud(100, 3)
    idx = farthest_point_sample(cloud[None], 100, min_norm_sq=0.0)[0]
    assert sorted(idx.tolist()) == list(range(100))


def test_fps_random_start_is_seeded():
    clouds = torch.stack([make_cloud(80, 7), make_cloud(80, 8)])
    a = farthest_point_sample(clouds, 10, start="random", generator=torch.Generator().manual_seed(3))
    b = farthest_point_sample(clouds, 10, start="random", generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    for row in range(2):
        assert a[row].tolist() == reference_fps(clouds[row], 10, first=int(a[row, 0]))


def test_fps_errors_are_clear():
    with pytest.raises(ValueError, match="asked for 11 samples from clouds of 10 points"):
        farthest_point_sample(torch.rand(1, 10, 3), 11)
    with pytest.raises(ValueError, match="start must be"):
        farthest_point_sample(torch.rand(1, 10, 3), 2, start="middle")
    with pytest.raises(ValueError, match="batch, points, dims"):
        farthest_point_sample(torch.rand(10, 3), 2)


@pytest.mark.parametrize("seed", [0, 1])
def test_knn_matches_brute_force(seed, device):
    gen = torch.Generator().manual_seed(seed)
    ref = torch.rand(2, 150, 3, generator=gen)
    ref[:, 100:120] = ref[:, :20]  # duplicate points: ties
    query = torch.rand(2, 17, 3, generator=gen)
    got = knn_indices(query.to(device), ref.to(device), 9).cpu()
    for b in range(2):
        for m in range(17):
            dists = [float(((ref[b, j] - query[b, m]) ** 2).sum()) for j in range(150)]
            expected = sorted(range(150), key=lambda j: dists[j])[:9]
            got_d = [dists[j] for j in got[b, m].tolist()]
            assert got_d == sorted(got_d)  # nearest first
            assert got_d == pytest.approx([dists[j] for j in expected], abs=1e-7)
            assert len(set(got[b, m].tolist())) == 9


def test_knn_too_many_neighbours():
    with pytest.raises(ValueError, match="asked for 6 neighbours among 5 points"):
        knn_indices(torch.rand(1, 2, 3), torch.rand(1, 5, 3), 6)


def test_gather_points():
    values = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    idx = torch.tensor([[[4, 0]], [[1, 1]]])
    got = gather_points(values, idx)
    assert got.shape == (2, 1, 2, 3)
    assert torch.equal(got[0, 0, 0], values[0, 4]) and torch.equal(got[1, 0, 1], values[1, 1])


def test_group_points_relative_neighbourhoods(device):
    clouds = torch.stack([make_cloud(300, 11), make_cloud(300, 12)]).to(device)
    hoods, centres = group_points(clouds, 12, 10)
    assert hoods.shape == (2, 12, 10, 3) and centres.shape == (2, 12, 3)
    fps = farthest_point_sample(clouds, 12)
    assert torch.equal(centres, gather_points(clouds, fps))
    # each centre is its own nearest neighbour: relative offset zero
    assert torch.allclose(hoods[:, :, 0], torch.zeros_like(hoods[:, :, 0]))
    absolute = hoods + centres.unsqueeze(2)
    for b in range(2):
        for g in range(12):
            d_all = ((clouds[b] - centres[b, g]) ** 2).sum(-1).sort().values[:10]
            d_got = ((absolute[b, g] - centres[b, g]) ** 2).sum(-1).sort().values
            assert torch.allclose(d_all, d_got, atol=1e-6)


def test_group_points_rejects_non_xyz():
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        group_points(torch.rand(1, 50, 6), 4, 4)
