"""The four benchmark variants and `make_split`.

Every sample is generated from its own seed sequence built from
(seed, split name, class, index), so a sample does not depend on how many
others are generated, train and test never share an object, and the four
variants of one (seed, split, class, index) show the same object: `clean` is
its full surface, `objonly` one scan of it, `objbg` the same scan with the
background in its box, `hardest` that scan cropped by a perturbed box.
"""
from __future__ import annotations

import zlib

import numpy as np

from ...progress import progress_bar
from ..split import PointSplit
from .classes import BUILDERS, CLASS_NAMES
from .primitives import yaw
from .scan import box_corners, clutter, dropout, inside_box, random_camera, sensor_noise, visible

GENERATOR_VERSION = "1.0"
VARIANTS = ("clean", "objonly", "objbg", "hardest")
DEFAULT_SAMPLES = {"train": 80, "test": 20}

DENSE_FACTOR = 4  # object surface samples per output point before the scan thins them
PIXELS_ACROSS = 40  # depth-image pixels across the object's bounding sphere
BACKGROUND_SHARE = {"objbg": (0.2, 0.4), "hardest": (0.1, 0.55)}  # clamp on background / all points
MIN_OBJECT_POINTS = 48  # fewer object points than this and a cut / dropout is not applied


def make_split(variant: str, split: str, samples_per_class: int | None = None, num_points: int = 1024,
               seed: int = 0, progress: bool = True) -> PointSplit:
    """Generate one class-balanced split of one variant.

    Conventions: y is up (as ScanObjectNN / ModelNet after the published
    loaders), each cloud is centred on its centroid and scaled into the unit
    sphere, objects have a random rotation about y. Samples are ordered
    round-robin over the classes, so any prefix is nearly balanced. `objbg`
    and `hardest` carry extras["mask"]: (n, num_points) int8, 1 object,
    -1 background, like ScanObjectNN's mask.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown synthetic variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if samples_per_class is None:
        if split not in DEFAULT_SAMPLES:
            raise ValueError(f"no default sample count for split {split!r}; pass samples_per_class")
        samples_per_class = DEFAULT_SAMPLES[split]
    if not split:
        raise ValueError("a split name is needed (train or test)")
    if samples_per_class < 1:
        raise ValueError(f"task option samples_per_class must be >= 1, got {samples_per_class}")
    if num_points < 16:
        raise ValueError(f"task option points must be >= 16, got {num_points}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    jobs = [(c, i) for i in range(samples_per_class) for c in range(len(CLASS_NAMES))]
    points = np.empty((len(jobs), num_points, 3), dtype=np.float32)
    masks = np.empty((len(jobs), num_points), dtype=np.int8) if variant in BACKGROUND_SHARE else None
    bar = progress_bar(jobs, progress, desc=f"synthetic {variant}:{split}", unit="obj", leave=False)
    for row, (class_index, index) in enumerate(bar):
        cloud, mask = generate_sample(variant, class_index, _streams(seed, split, class_index, index), num_points)
        points[row] = cloud
        if masks is not None:
            masks[row] = mask
    return PointSplit(
        points=points, labels=np.array([c for c, _ in jobs], dtype=np.int64), class_names=list(CLASS_NAMES),
        name=f"synthetic/{variant}:{split}",
        source=(f"pointpeft_ray synthetic generator v{GENERATOR_VERSION} variant={variant} split={split} "
                f"samples_per_class={samples_per_class} num_points={num_points} seed={seed}"),
        extras={} if masks is None else {"mask": masks})


def _streams(seed, split, class_index, index):
    """Independent generators for the object, its surface, the view, the background and the perturbation."""
    split_code = zlib.crc32(split.encode("utf-8"))  # stable across runs, unlike hash()
    sequence = np.random.SeedSequence([seed, split_code, class_index, index])
    return dict(zip(("shape", "surface", "view", "background", "perturb"),
                    (np.random.default_rng(s) for s in sequence.spawn(5))))


def generate_sample(variant, class_index, rngs, num_points):
    """One cloud (num_points, 3) float32 and its object mask (or None)."""
    shape = BUILDERS[class_index](rngs["shape"])
    warp = rngs["shape"].uniform([-0.15, -0.04, -0.04], [0.15, 0.04, 0.04])  # taper, shear x, shear z
    turn = yaw(rngs["perturb"].uniform(0, 2 * np.pi))  # final heading, the same in every variant
    if variant == "clean":
        return normalise(_warp(shape.sample(num_points, rngs["surface"]), warp) @ turn.T), None
    dense = shape.sample(DENSE_FACTOR * num_points, rngs["surface"], with_normals=True)
    _warp(dense[0], warp)
    scene = _Scene(dense, shape.area(), rngs)
    if variant == "objonly":
        obj, _ = scene.scan()
        cloud, mask = _resample_pool(obj, obj[:0], num_points, rngs["view"], None)
    else:
        cloud, mask = scene.cropped(variant, num_points)
    return normalise(cloud @ turn.T), mask


def _warp(points, warp):
    """Stand the points on the floor, then taper and lean them slightly (in place).

    A little global deformation adds the shape variety of real furniture that
    part proportions alone do not give. Normals are left as they were: the
    change is a few degrees at most.
    """
    points[:, 1] -= points[:, 1].min()
    relative = points[:, 1] / max(float(points[:, 1].max()), 1e-9) - 0.5
    points[:, [0, 2]] *= (1.0 + warp[0] * relative)[:, None]
    points[:, 0] += warp[1] * points[:, 1]
    points[:, 2] += warp[2] * points[:, 1]
    return points


class _Scene:
    """An object standing on a floor in its own frame (front +z), a camera, and maybe clutter."""

    def __init__(self, dense, area, rngs):
        self.dense, self.normals, self.two_sided = dense
        self.rngs = rngs
        dense = self.dense
        self.low, self.high = dense.min(axis=0), dense.max(axis=0)
        self.centre = (self.low + self.high) / 2
        self.radius = float(np.linalg.norm(self.high - self.low)) / 2
        self.density = len(dense) / area
        self.eye = self._pick_camera()

    def _pick_camera(self, tries: int = 3, enough: float = 0.12):
        """A random viewpoint, redrawn (up to `tries`) when it would see almost nothing of the object.

        Nobody scans a door edge-on on purpose; the best of the tries is kept.
        """
        best, best_seen = None, None
        for _ in range(tries):
            self.eye = random_camera(self.rngs["view"], self.centre, self.radius)
            seen = self._visible(self.dense, self.normals, self.two_sided)
            if best_seen is None or seen.mean() > best_seen.mean():
                best, best_seen = self.eye, seen
            if seen.mean() >= enough:
                break
        if best_seen.sum() < MIN_OBJECT_POINTS:  # degenerate view: keep at least the nearest points
            self.eye = best
            nearest = np.argsort(np.linalg.norm(self.dense - best, axis=1))[:MIN_OBJECT_POINTS]
            best_seen[nearest] = True
        self.seen_alone = best_seen  # visibility of the object without clutter, reused by scan()
        return best

    def scan(self, region=None):
        """Visible, noisy, partly dropped points: (object points, background points).

        With a `region` (low, high), clutter inside it is added first, so it
        occludes and is occluded by the object as seen from the one camera.
        """
        surface, seen = (self.dense, self.normals, self.two_sided), self.seen_alone.copy()
        if region is not None:
            background = clutter(self.rngs["background"], (self.low, self.high), region, self.eye, BUILDERS,
                                 self.density, 3 * len(self.dense))
            surface = tuple(np.concatenate(pair) for pair in zip(surface, background))
            seen = self._visible(*surface)
        everything = surface[0]
        is_object = np.arange(len(everything)) < len(self.dense)
        if (seen & is_object).sum() < MIN_OBJECT_POINTS:  # a neighbour hides it all: scan it as if alone
            seen[is_object] = self.seen_alone
        noisy, is_object = sensor_noise(everything[seen], self.eye, self.radius, self.rngs["view"]), is_object[seen]
        keep = dropout(noisy, self.radius, self.rngs["view"])
        if (keep & is_object).sum() < MIN_OBJECT_POINTS:  # dropout ate the object: keep everything
            keep[:] = True
        return noisy[keep & is_object], noisy[keep & ~is_object]

    def _visible(self, points, normals, two_sided):
        return visible(points, normals, two_sided, self.eye, self.centre, self.radius, PIXELS_ACROSS)

    def object_box(self):
        """ScanObjectNN-style box: the object's bounds plus a margin, reaching a little below the floor."""
        size = self.high - self.low
        margin = size * self.rngs["background"].uniform(0.04, 0.15, size=3)
        low, high = self.low - margin, self.high + margin
        low[1] = -max(0.02, 0.04 * size[1])  # take in the floor's noisy surface
        return (low + high) / 2, (high - low) / 2, np.eye(3)

    def perturbed_boxes(self, box):
        """PB_T50_RS: shift by up to 50 % of the box size (-20 to +5 % vertically), turn about y, rescale axes.

        Returns the perturbed box followed by fallbacks with the shift halved,
        quartered and removed, and last the unperturbed box, for when a crop
        leaves too little of the object in view (a turned box can miss most of
        a thin door).
        """
        rng = self.rngs["perturb"]
        centre, half, _ = box
        # vertically mostly downwards: a box lifted off the floor would lose the floor patch entirely
        shift = rng.uniform([-0.5, -0.2, -0.5], [0.5, 0.05, 0.5]) * 2 * half
        half = half * rng.uniform(0.85, 1.2, size=3)
        turn = yaw(rng.uniform(-np.pi / 6, np.pi / 6))
        return [(centre + shift * shrink, half, turn) for shrink in (1.0, 0.5, 0.25, 0.0)] + [box]

    def cropped(self, variant, num_points):
        """objbg / hardest: scan with clutter, crop to the (perturbed) box, clamp the background share."""
        box = self.object_box()
        crops = [box] if variant == "objbg" else self.perturbed_boxes(box)
        # clutter must cover every candidate crop (shrunk shifts lie between the first and the unshifted)
        corners = np.concatenate([box_corners(*b) for b in [box] + crops])
        obj, bg = self.scan(region=(corners.min(axis=0), corners.max(axis=0)))
        for crop in crops:
            in_crop = inside_box(obj, *crop)
            if in_crop.sum() >= max(MIN_OBJECT_POINTS, 0.25 * len(obj)):
                break
        obj, bg = obj[in_crop], bg[inside_box(bg, *crop)]
        rng = self.rngs["perturb"]
        if variant == "hardest":
            obj, bg = self._cut_corner(obj, bg, rng)
        cloud, mask = _resample_pool(obj, bg, num_points, rng, BACKGROUND_SHARE[variant])
        if variant == "hardest":  # anisotropic scaling of the whole cloud
            cloud = cloud * rng.uniform(0.85, 1.15, size=3)
        return cloud, mask

    def _cut_corner(self, obj, bg, rng):
        """A third of the time, cut away a block at a random corner of the object (10-25 % per axis)."""
        if rng.random() >= 1 / 3:
            return obj, bg
        size = (self.high - self.low) * rng.uniform(0.2, 0.5, size=3)
        corner = np.where(rng.random(3) < 0.5, self.low, self.high)
        cut = (corner, size, np.eye(3))  # a box centred on the corner: its inner octant is removed
        kept = ~inside_box(obj, *cut)
        if kept.sum() < MIN_OBJECT_POINTS:
            return obj, bg
        return obj[kept], bg[~inside_box(bg, *cut)]


def _resample_pool(obj, bg, n, rng, share_range):
    """Exactly n points: background share = the scene's own share clamped to `share_range`."""
    if share_range is None or len(bg) == 0:
        n_bg = 0
    else:
        natural = len(bg) / (len(bg) + len(obj))
        n_bg = int(round(np.clip(natural, *share_range) * n))
    picked_obj, picked_bg = _choose(obj, n - n_bg, rng), _choose(bg, n_bg, rng)
    cloud = np.concatenate([picked_obj, picked_bg])
    mask = np.concatenate([np.ones(len(picked_obj), np.int8), -np.ones(len(picked_bg), np.int8)])
    order = rng.permutation(n)
    return cloud[order], mask[order]


def _choose(points, n, rng):
    """n of the points, without replacement when there are enough.

    When short, repeats are nudged by a tiny offset (a fraction of the typical
    point spacing) so no two points coincide exactly.
    """
    if n == 0:
        return points[:0]
    if len(points) >= n:
        return points[rng.choice(len(points), n, replace=False)]
    extra = points[rng.choice(len(points), n - len(points), replace=True)]
    spacing = float(np.linalg.norm(points.max(axis=0) - points.min(axis=0))) / np.sqrt(len(points))
    return np.concatenate([points, extra + rng.normal(0.0, 0.1 * spacing, size=extra.shape)])


def normalise(cloud):
    """Centre on the centroid and scale into the unit sphere (the published ModelNet loader's pc_normalize)."""
    cloud = cloud - cloud.mean(axis=0)
    return (cloud / max(float(np.linalg.norm(cloud, axis=1).max()), 1e-9)).astype(np.float32)
