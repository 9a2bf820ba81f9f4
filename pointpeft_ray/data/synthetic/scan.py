"""Simulated scanning: one depth camera, sensor noise, background clutter, crop boxes.

Visibility needs no mesh: every sampled point carries its surface normal, so
back faces of closed parts are culled outright, and occlusion between parts
is a z-buffer test: points are projected into a coarse depth image, each pixel
keeps its nearest depth, the image is min-filtered over 3x3 pixels (a point
sample has holes that a real surface does not, and the filter plugs them), and
a point survives when it is within a slope-aware tolerance of that depth.
Surfaces seen at grazing angles and points on depth discontinuities are lost,
much as a real depth sensor loses them.
"""
from __future__ import annotations

import numpy as np

from .primitives import Shape, yaw

UP = np.array([0.0, 1.0, 0.0])


# ------------------------------------------------------------------- cameras
def random_camera(rng, target: np.ndarray, radius: float) -> np.ndarray:
    """A camera position at a person's viewpoint: somewhat above, any side, 2-3.5 radii away."""
    azimuth = rng.uniform(0.0, 2.0 * np.pi)
    elevation = rng.uniform(np.radians(10.0), np.radians(55.0))
    distance = radius * rng.uniform(2.0, 3.5)
    direction = np.array([np.cos(elevation) * np.sin(azimuth), np.sin(elevation),
                          np.cos(elevation) * np.cos(azimuth)])
    return target + distance * direction


def _camera_frame(eye, target):
    forward = target - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, UP)
    right /= np.linalg.norm(right)  # elevation stays below 90 degrees, so this is safe
    return right, np.cross(right, forward), forward


def visible(points, normals, two_sided, eye, target, object_radius, pixels_across: int,
            max_incidence_deg: float = 80.0, slope_reach: float = 2.0) -> np.ndarray:
    """Boolean mask of the points a depth camera at `eye` looking at `target` sees.

    Three tests: the surface faces the camera (back faces of closed parts are
    culled; two-sided sheets face it from either side), it is not seen at a
    grazing angle (sensors return nothing there), and it is not behind a
    nearer surface in the min-filtered depth image. The depth tolerance grows
    with the surface's slope, since one sloped surface spans a range of
    depths across the `slope_reach` pixels the filter looks at.
    """
    right, up, forward = _camera_frame(eye, target)
    rel = points - eye
    distance = float(np.linalg.norm(target - eye))
    depth = np.maximum(rel @ forward, 1e-6)
    to_eye = -rel / np.linalg.norm(rel, axis=1, keepdims=True)
    cos = np.einsum("ij,ij->i", normals, to_eye)
    cos = np.where(two_sided, np.abs(cos), cos)
    facing = cos > np.cos(np.radians(max_incidence_deg))
    # the field of view: a few times the object's angular size, nothing behind a near plane
    half_fov = 4.0 * object_radius / distance
    u, v = np.clip((rel @ right) / depth, -half_fov, half_fov), np.clip((rel @ up) / depth, -half_fov, half_fov)
    in_view = (depth > 0.2 * object_radius) & (np.abs(u) < half_fov) & (np.abs(v) < half_fov)
    facing &= in_view
    # pixel size fixed by the object's angular size, so the point density per
    # pixel does not depend on how much clutter surrounds it
    pixel = 2.0 * object_radius / distance / pixels_across
    u0, v0 = (u[facing].min(), v[facing].min()) if facing.any() else (0.0, 0.0)
    iu = np.clip(np.floor((u - u0) / pixel), 0, None).astype(np.int64)
    iv = np.clip(np.floor((v - v0) / pixel), 0, None).astype(np.int64)
    width, height = int(iu[facing].max(initial=0)) + 1, int(iv[facing].max(initial=0)) + 1
    iu, iv = np.minimum(iu, width - 1), np.minimum(iv, height - 1)  # out-of-view points: clamped, masked below
    flat = iv * width + iu
    zbuf = np.full(width * height, np.inf)
    np.minimum.at(zbuf, flat[facing], depth[facing])
    zbuf = _min_filter3(zbuf.reshape(height, width)).reshape(-1)
    slope = np.sqrt(np.maximum(1.0 - cos ** 2, 0.0)) / np.maximum(cos, 1e-3)
    tolerance = pixel * depth * (0.5 + slope_reach * slope)
    return facing & (depth <= zbuf[flat] + tolerance)


def _min_filter3(image):
    padded = np.pad(image, 1, constant_values=np.inf)
    h, w = image.shape
    out = image.copy()
    for dy in range(3):
        for dx in range(3):
            np.minimum(out, padded[dy:dy + h, dx:dx + w], out=out)
    return out


# ---------------------------------------------------------------------- noise
def sensor_noise(points, eye, scale, rng) -> np.ndarray:
    """Depth noise along the viewing ray (dominant for depth cameras) plus a small isotropic jitter."""
    rays = points - eye
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)
    along = rng.normal(0.0, scale * rng.uniform(0.002, 0.012), size=(len(points), 1))
    jitter = rng.normal(0.0, scale * rng.uniform(0.001, 0.005), size=points.shape)
    return points + rays * along + jitter


def dropout(points, scale, rng) -> np.ndarray:
    """Keep-mask: random point dropout plus 0-2 missing blobs (specular / dark surfaces)."""
    keep = rng.random(len(points)) >= rng.uniform(0.0, 0.2)
    for _ in range(int(rng.integers(0, 3))):
        centre = points[rng.integers(len(points))]
        radius = scale * rng.uniform(0.05, 0.15)
        keep &= np.sum((points - centre) ** 2, axis=1) > radius ** 2
    return keep


# -------------------------------------------------------------------- clutter
def clutter(rng, object_box, region, eye, builders, density: float, max_points: int) -> np.ndarray:
    """Background around an object (object frame): a floor patch, maybe a wall, 0-2 neighbours.

    `object_box` and `region` are (low, high) corners; only clutter inside
    `region` (the box the scan will be cropped to, or a box covering every crop
    that may be taken) is generated. Everything is sampled at the object's
    point density, and neighbours stand beside the object reaching only a
    little into its box, so a crop shows a floor patch and slices of other
    furniture, as in ScanObjectNN's OBJ_BG.
    """
    low, high = region
    floor = Shape().rect(((low[0] + high[0]) / 2, 0.0, (low[2] + high[2]) / 2), high[0] - low[0], high[2] - low[2])
    parts = [_sample_at_density(floor, density, max_points, rng)]
    if rng.random() < 0.5:
        parts.append(_wall(rng, object_box, region, eye, density, max_points))
    for _ in range(int(rng.choice([0, 1, 1, 2]))):
        parts.append(_neighbour(rng, object_box, region, builders, density, max_points))
    parts = [part for part in parts if part is not None]
    points, normals, two_sided = (np.concatenate(arrays) for arrays in zip(*parts))
    slack = 0.02 * (high - low)
    keep = np.all((points >= low - slack) & (points <= high + slack), axis=1)
    return points[keep], normals[keep], two_sided[keep]


def _sample_at_density(shape, density, max_points, rng):
    """(points, normals, two_sided) at the object's density, capped for huge surfaces."""
    n = int(min(max_points, max(16, shape.area() * density)))
    return shape.sample(n, rng, with_normals=True)


def _wall(rng, object_box, region, eye, density, max_points):
    """A wall just behind one side of the object (the side away from the camera), across the region."""
    (box_low, box_high), (low, high) = object_box, region
    size = box_high - box_low
    axis = 0 if rng.random() < 0.5 else 2  # wall normal along x or z
    outward = eye[axis] < (box_low[axis] + box_high[axis]) / 2  # the camera never stands behind the wall
    gap = rng.uniform(-0.02, 0.12) * size[axis]
    offset = (low + high) / 2
    offset[axis] = box_high[axis] + gap if outward else box_low[axis] - gap
    height = high[1] - max(low[1], 0.0)
    offset[1] = max(low[1], 0.0) + height / 2
    across = 2 if axis == 0 else 0
    span = high[across] - low[across]
    # a rect lies in its local x-z plane: stand it up so its normal points along `axis`
    if axis == 0:
        stand = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        wall = Shape().rect(offset, height, span, rotation=stand)
    else:
        stand = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
        wall = Shape().rect(offset, span, height, rotation=stand)
    return _sample_at_density(wall, density, max_points, rng)


def _neighbour(rng, object_box, region, builders, density, max_points):
    """Another piece of furniture standing beside the object, overlapping its box margin a little.

    Only its parts that can reach into the region are sampled (at the object's
    density); None when none do.
    """
    box_low, box_high = object_box
    shape = builders[int(rng.integers(len(builders)))](rng)
    turn = yaw(rng.uniform(0, 2 * np.pi))
    pilot = shape.sample(256, rng) @ turn.T  # rough extent, to place it
    lo, hi = pilot.min(axis=0), pilot.max(axis=0)
    size = box_high - box_low
    angle = rng.uniform(0, 2 * np.pi)
    direction = np.array([np.sin(angle), 0.0, np.cos(angle)])
    # push it out along `direction` until the boxes just touch, then back in by up to 15 % of the box
    own_reach = np.abs(direction) @ (size / 2)
    other_reach = np.abs(direction) @ ((hi - lo) / 2)
    overlap = rng.uniform(-0.05, 0.15) * (np.abs(direction) @ size)
    centre = (box_low + box_high) / 2 + direction * (own_reach + other_reach - overlap)
    shift = centre - (lo + hi) / 2
    shift[1] = -lo[1]  # standing on the floor
    near = shape.moved_parts_near(turn, shift, *region)
    return None if near.is_empty() else _sample_at_density(near, density, max_points, rng)


def box_corners(centre, half, rotation) -> np.ndarray:
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
    return centre + (signs * half) @ rotation.T


def inside_box(points, centre, half, rotation) -> np.ndarray:
    """Mask of the points inside an oriented box (rotation's columns are the box axes)."""
    local = (points - centre) @ rotation
    return np.all(np.abs(local) <= half, axis=1)
