"""The synthetic benchmark suite: shapes, determinism, splits, the scan simulation, difficulty."""
import hashlib

import numpy as np
import pytest

from pointpeft_ray.data import PointSplit
from pointpeft_ray.data.synthetic import CLASS_NAMES, DEFAULT_SAMPLES, GENERATOR_VERSION, VARIANTS, make_split
from pointpeft_ray.data.synthetic.primitives import Shape, _rotation_to
from pointpeft_ray.data.synthetic.scan import visible

POINTS = 256
PER_CLASS = 4
NUM_CLASSES = len(CLASS_NAMES)


@pytest.fixture(scope="module")
def small():
    """Every variant, both splits, a few samples per class (generated once for the module)."""
    return {(v, s): make_split(v, s, PER_CLASS, POINTS, seed=3, progress=False)
            for v in VARIANTS for s in ("train", "test")}


def _digest(split: PointSplit) -> str:
    h = hashlib.sha256(split.points.tobytes())
    h.update(split.labels.tobytes())
    for key in sorted(split.extras):
        h.update(np.ascontiguousarray(split.extras[key]).tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------- contract
def test_constants():
    assert len(CLASS_NAMES) >= 15 and len(set(CLASS_NAMES)) == len(CLASS_NAMES)
    assert DEFAULT_SAMPLES == {"train": 80, "test": 20}
    assert isinstance(GENERATOR_VERSION, str) and GENERATOR_VERSION
    assert VARIANTS == ("clean", "objonly", "objbg", "hardest")


@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes_dtypes_and_balance(small, variant):
    split = small[(variant, "train")]
    assert isinstance(split, PointSplit)
    assert split.points.shape == (PER_CLASS * NUM_CLASSES, POINTS, 3) and split.points.dtype == np.float32
    assert split.labels.dtype == np.int64 and split.class_names == CLASS_NAMES
    assert np.isfinite(split.points).all()
    assert set(split.class_counts().values()) == {PER_CLASS}  # balanced, every class present
    assert list(split.labels[:NUM_CLASSES]) == list(range(NUM_CLASSES))  # round-robin order
    assert np.linalg.norm(split.points, axis=2).max() <= 1.0 + 1e-5
    if variant in ("objbg", "hardest"):
        mask = split.extras["mask"]
        assert mask.shape == (len(split), POINTS) and set(np.unique(mask)) <= {-1, 1}
        assert (mask == 1).any(axis=1).all()  # the object is never cropped away entirely
    else:
        assert "mask" not in split.extras


def test_bad_arguments():
    with pytest.raises(ValueError):
        make_split("pb_t50", "train", 1, 64, progress=False)
    with pytest.raises(ValueError):
        make_split("clean", "val", None, 64, progress=False)  # no default size for "val"
    with pytest.raises(ValueError):
        make_split("clean", "train", 0, 64, progress=False)


def test_progress_bar_runs():
    assert len(make_split("objonly", "test", 1, 64, seed=0, progress=True)) == NUM_CLASSES


# ---------------------------------------------------------------- determinism
@pytest.mark.parametrize("variant", VARIANTS)
def test_deterministic_by_seed(small, variant):
    again = make_split(variant, "train", PER_CLASS, POINTS, seed=3, progress=False)
    assert _digest(again) == _digest(small[(variant, "train")])
    other = make_split(variant, "train", PER_CLASS, POINTS, seed=4, progress=False)
    assert not np.array_equal(other.points, again.points)


def test_samples_do_not_depend_on_split_size(small):
    # per-sample seeds: a smaller split is a prefix of a larger one
    fewer = make_split("objbg", "test", PER_CLASS - 1, POINTS, seed=3, progress=False)
    assert np.array_equal(fewer.points, small[("objbg", "test")].points[: len(fewer)])


@pytest.mark.parametrize("variant", VARIANTS)
def test_train_and_test_disjoint(small, variant):
    train, test = small[(variant, "train")], small[(variant, "test")]
    train_hashes = {hashlib.sha1(p.tobytes()).hexdigest() for p in train.points}
    assert not any(hashlib.sha1(p.tobytes()).hexdigest() in train_hashes for p in test.points)
    # not merely re-sampled either: the objects' extents differ
    ext_train = np.sort(np.ptp(train.points, axis=1), axis=1)
    ext_test = np.sort(np.ptp(test.points, axis=1), axis=1)
    closest = np.abs(ext_test[:, None] - ext_train[None]).sum(-1).min(axis=1)
    assert closest.min() > 1e-4


# -------------------------------------------------------------- the variants
def test_clean_is_centred_unit_sphere_and_upright(small):
    points = small[("clean", "train")].points
    assert np.abs(points.mean(axis=1)).max() < 1e-5
    assert np.allclose(np.linalg.norm(points, axis=2).max(axis=1), 1.0, atol=1e-5)
    # y is up: every object stands on a flat floor, so its lowest points share one height
    lowest = np.sort(points[..., 1], axis=1)[:, :POINTS // 50]
    assert np.median(np.ptp(lowest, axis=1)) < 0.05


def test_scanner_sees_one_side_of_a_box():
    rng = np.random.default_rng(0)
    points, normals, two_sided = Shape().box((0, 0.5, 0), (1.0, 1.0, 1.0)).sample(8000, rng, with_normals=True)
    centre, eye = np.array([0.0, 0.5, 0.0]), np.array([2.0, 1.6, 2.4])
    seen = visible(points, normals, two_sided, eye, centre, np.sqrt(3) / 2, 40)
    facing = ((eye - points) * normals).sum(axis=1) > 0
    assert 0.25 < seen.mean() < 0.55
    assert facing[seen].mean() > 0.99  # nothing seen through the box
    assert seen[facing].mean() > 0.8  # and most of the near faces are kept
    # an occluder in front hides what is behind it
    plate = Shape().rect((0.0, 0.0, 0.0), 0.4, 0.4).sample(3000, rng, with_normals=True)
    direction = (eye - centre) / np.linalg.norm(eye - centre)
    turn = _rotation_to(direction)
    plate_pts = plate[0] @ turn.T + centre + 0.6 * (eye - centre)
    both = visible(np.concatenate([points, plate_pts]), np.concatenate([normals, plate[1] @ turn.T]),
                   np.concatenate([two_sided, plate[2]]), eye, centre, np.sqrt(3) / 2, 40)[: len(points)]
    rays = (points - eye) / np.linalg.norm(points - eye, axis=1, keepdims=True)
    behind = rays @ -direction > np.cos(np.arctan(0.1 / (0.4 * np.linalg.norm(eye - centre))))
    assert behind.sum() > 20 and both[behind & facing].mean() < 0.1


def _lopsidedness(points):
    """How unevenly points fall either side of the bounding-box centre, worst horizontal direction.

    A full surface splits about evenly; one depth view holds mostly the near side.
    """
    angles = np.linspace(0, np.pi, 8, endpoint=False)
    dirs = np.stack([np.cos(angles), np.zeros_like(angles), np.sin(angles)], axis=1)
    proj = points @ dirs.T  # (n, P, 8)
    mid = (proj.max(axis=1) + proj.min(axis=1)) / 2
    return np.abs((proj > mid[:, None]).mean(axis=1) - 0.5).max(axis=1)


def test_objonly_is_a_partial_view(small):
    clean = _lopsidedness(np.concatenate([small[("clean", s)].points for s in ("train", "test")]))
    scan = _lopsidedness(np.concatenate([small[("objonly", s)].points for s in ("train", "test")]))
    print(f"\nlopsidedness clean {clean.mean():.3f}  objonly {scan.mean():.3f}")
    assert scan.mean() > clean.mean() + 0.04


def _background_share(split):
    return (split.extras["mask"] == -1).mean(axis=1)


def test_objbg_background_share(small):
    share = np.concatenate([_background_share(small[("objbg", s)]) for s in ("train", "test")])
    print(f"\nobjbg background share mean {share.mean():.2f} range {share.min():.2f}-{share.max():.2f}")
    assert 0.2 <= share.mean() <= 0.4
    assert ((share >= 0.2 - 1e-3) & (share <= 0.4 + 1e-3)).mean() > 0.9
    # the same objects as objonly, but the object is no longer all there is
    assert (share > 0).mean() > 0.9


def test_hardest_is_perturbed(small):
    def off_centre(split):  # distance of the object's centroid (per the mask) from the cloud's centre
        obj = np.where((split.extras["mask"] == 1)[..., None], split.points, np.nan)
        return np.linalg.norm(np.nanmean(obj, axis=1), axis=1)

    bg = [small[("objbg", s)] for s in ("train", "test")]
    hard = [small[("hardest", s)] for s in ("train", "test")]
    share_bg, share_hard = (np.concatenate([_background_share(s) for s in group]) for group in (bg, hard))
    off_bg, off_hard = (np.concatenate([off_centre(s) for s in group]) for group in (bg, hard))
    print(f"\nobject off-centre objbg {off_bg.mean():.3f} hardest {off_hard.mean():.3f}; "
          f"background share std objbg {share_bg.std():.3f} hardest {share_hard.std():.3f}")
    assert off_hard.mean() > 1.3 * off_bg.mean()
    assert share_hard.std() > share_bg.std()
    assert share_hard.max() > 0.45  # some crops are mostly background


# ----------------------------------------------------------------- difficulty
def _features(points):
    """A few handcrafted global descriptors: height, sorted footprint, radial and height histograms."""
    extent = np.ptp(points, axis=1)
    footprint = np.sort(extent[:, [0, 2]], axis=1)
    radius = np.linalg.norm(points, axis=2)
    radial = np.stack([np.histogram(r, 8, (0, 1))[0] for r in radius]) / points.shape[1]
    height = np.stack([np.histogram(y, 8, (-1, 1))[0] for y in points[..., 1]]) / points.shape[1]
    return np.concatenate([extent[:, 1:2], footprint, radial, height], axis=1)


def _nearest_centroid_accuracy(train, test):
    f_train, f_test = _features(train.points), _features(test.points)
    mean, std = f_train.mean(axis=0), f_train.std(axis=0) + 1e-6
    f_train, f_test = (f_train - mean) / std, (f_test - mean) / std
    centroids = np.stack([f_train[train.labels == c].mean(axis=0) for c in range(NUM_CLASSES)])
    predicted = np.argmin(((f_test[:, None] - centroids[None]) ** 2).sum(axis=-1), axis=1)
    return float((predicted == test.labels).mean())


def test_learnable_but_not_trivial():
    accuracy = {}
    for variant in ("clean", "hardest"):
        train = make_split(variant, "train", 16, 512, seed=0, progress=False)
        test = make_split(variant, "test", 8, 512, seed=0, progress=False)
        accuracy[variant] = _nearest_centroid_accuracy(train, test)
    chance = 1.0 / NUM_CLASSES
    print("\nnearest-centroid accuracy: " + ", ".join(f"{v} {a:.3f}" for v, a in accuracy.items())
          + f" (chance {chance:.3f})")
    assert accuracy["clean"] > 4 * chance  # the classes are learnable from global shape alone
    assert accuracy["hardest"] < 0.9  # but the hardest variant is far from solved by it
    assert accuracy["hardest"] < accuracy["clean"]
