"""Surface primitives and area-weighted surface sampling.

A `Shape` is a bag of surface primitives (boxes, frusta, disks, ellipsoids,
torus arcs, rectangles), each stored as local parameters plus a rotation and an
offset. Sampling draws how many points each primitive gets from one
multinomial over the primitive areas (so a thin leg gets few points and a
table top many, like sampling a mesh), then samples every primitive of one
kind in a single vectorised call. There is no Python loop per point, only one
per primitive kind.

Coordinates: metres, y is up, the floor is y = 0, the object's front faces +z.
"""
from __future__ import annotations

import numpy as np

TWO_PI = 2.0 * np.pi
KINDS = ("box", "frustum", "disk", "ellipsoid", "torus", "rect")

# Thomsen's exponent: his closed form for an ellipsoid's area is within ~1 %.
_THOMSEN_P = 1.6075


def yaw(angle: float) -> np.ndarray:
    """Rotation about the up (y) axis; positive turns +z towards +x."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def pitch(angle: float) -> np.ndarray:
    """Rotation about the x axis; positive tilts +y towards +z."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def roll(angle: float) -> np.ndarray:
    """Rotation about the z axis; positive tilts +x towards +y."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


class Shape:
    """Surface primitives of one object (or one piece of scenery)."""

    def __init__(self) -> None:
        # per kind: lists of parameter rows, rotations (3x3) and offsets (3,)
        self._params: dict[str, list] = {k: [] for k in KINDS}
        self._rot: dict[str, list] = {k: [] for k in KINDS}
        self._off: dict[str, list] = {k: [] for k in KINDS}

    # ----------------------------------------------------------------- building
    def _add(self, kind: str, params, center, rotation) -> "Shape":
        self._params[kind].append(np.asarray(params, dtype=np.float64))
        self._rot[kind].append(np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64))
        self._off[kind].append(np.asarray(center, dtype=np.float64))
        return self

    def box(self, center, size, rotation=None) -> "Shape":
        """Closed cuboid of full `size` (x, y, z) around `center`."""
        half = np.maximum(np.asarray(size, dtype=np.float64), 1e-4) / 2.0
        return self._add("box", half, center, rotation)

    def frustum(self, base, radius, height, top_radius=None, rotation=None, caps=(True, True)) -> "Shape":
        """Cylinder / truncated cone standing on `base`, axis along local +y."""
        top = radius if top_radius is None else top_radius
        closed = float(caps[0] and caps[1])  # an open tube is seen from inside too
        self._add("frustum", (radius, top, height, closed), base, rotation)
        rot = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
        if caps[0]:
            self.disk(base, radius, rotation=rot)
        if caps[1]:
            self.disk(np.asarray(base, dtype=np.float64) + rot @ np.array([0.0, height, 0.0]), top, rotation=rot)
        return self

    def disk(self, center, radius, inner=0.0, rotation=None, stretch=(1.0, 1.0)) -> "Shape":
        """Flat disk or annulus in the local x-z plane; `stretch` makes it elliptical."""
        return self._add("disk", (inner, radius, stretch[0], stretch[1]), center, rotation)

    def ellipsoid(self, center, radii, rotation=None, lower_half=False) -> "Shape":
        """Ellipsoid surface, or only its lower half (a bowl) when `lower_half`."""
        return self._add("ellipsoid", (*radii, float(lower_half)), center, rotation)

    def torus_arc(self, center, major, minor, start, stop, rotation=None) -> "Shape":
        """Tube of radius `minor` bent along an arc (angles in the local x-y plane)."""
        return self._add("torus", (major, minor, start, stop), center, rotation)

    def rect(self, center, size_x, size_z, rotation=None) -> "Shape":
        """One-sided rectangle in the local x-z plane (floors, walls, flaps)."""
        return self._add("rect", (size_x / 2.0, size_z / 2.0), center, rotation)

    def cylinder_between(self, start, end, radius, caps=True) -> "Shape":
        """Round rod from `start` to `end` (chair legs, poles, handles)."""
        start, end = np.asarray(start, dtype=np.float64), np.asarray(end, dtype=np.float64)
        axis = end - start
        length = float(np.linalg.norm(axis))
        return self.frustum(start, radius, length, rotation=_rotation_to(axis / max(length, 1e-9)),
                            caps=(caps, caps))

    # ------------------------------------------------------------ rearranging
    def moved_parts_near(self, rotation, shift, low, high) -> "Shape":
        """This shape turned by `rotation` then shifted, keeping only parts that may reach into [low, high].

        Lets the scene sample a big neighbouring object at full density where
        it enters the crop without paying for the parts far outside it.
        """
        out = Shape()
        for kind in KINDS:
            for params, rot, off in zip(self._params[kind], self._rot[kind], self._off[kind]):
                centre, radius = _bounding_sphere(kind, params, rot, off)
                centre = rotation @ centre + shift
                gap = centre - np.clip(centre, low, high)
                if gap @ gap <= radius * radius:
                    out._add(kind, params, rotation @ off + shift, rotation @ rot)
        return out

    def is_empty(self) -> bool:
        return not any(self._params[k] for k in KINDS)

    # ----------------------------------------------------------------- sampling
    def _arrays(self, kind):
        return (np.stack(self._params[kind]), np.stack(self._rot[kind]), np.stack(self._off[kind]))

    def area(self) -> float:
        return float(sum(_AREA[k](self._arrays(k)[0]).sum() for k in KINDS if self._params[k]))

    def sample(self, n: int, rng: np.random.Generator, with_normals: bool = False):
        """`n` points spread uniformly over the whole surface, shuffled: (n, 3) float64.

        With `with_normals`, also unit normals (n, 3) and a per-point flag
        telling whether the surface is two-sided (open or flat surfaces seen
        from both sides), which the scanner's back-face culling needs.
        """
        kinds = [k for k in KINDS if self._params[k]]
        packed = [self._arrays(k) for k in kinds]
        areas = np.concatenate([_AREA[k](p[0]) for k, p in zip(kinds, packed)])
        counts = rng.multinomial(n, areas / areas.sum())
        points, normals, sided, start = [], [], [], 0
        for kind, (params, rots, offs) in zip(kinds, packed):
            per_part = counts[start:start + len(params)]
            start += len(params)
            if per_part.sum() == 0:
                continue
            which = np.repeat(np.arange(len(params)), per_part)
            local, local_normal = _SAMPLE[kind](params[which], rng)
            _place_blocks(local, local_normal, rots, offs, per_part)
            points.append(local)
            normals.append(local_normal)
            sided.append(_TWO_SIDED[kind](params[which]))
        order = rng.permutation(n)
        if not with_normals:
            return np.concatenate(points)[order]
        return np.concatenate(points)[order], np.concatenate(normals)[order], np.concatenate(sided)[order]


def _place_blocks(points, normals, rots, offs, counts):
    """Rotate and shift, in place, consecutive blocks of points (one block per primitive).

    One small matmul per primitive beats gathering an (n, 3, 3) rotation per point.
    """
    ends = np.cumsum(counts)
    for rot, off, end, count in zip(rots, offs, ends, counts):
        if count == 0:
            continue
        block = slice(end - count, end)
        if not (rot[0, 0] == 1.0 and rot[1, 1] == 1.0 and rot[2, 2] == 1.0):  # identity needs no turn
            points[block] = points[block] @ rot.T
            normals[block] = normals[block] @ rot.T
        points[block] += off


def _bounding_sphere(kind, p, rot, off):
    """A sphere (centre, radius) holding one primitive, for cheap culling."""
    if kind == "box":
        return off, float(np.linalg.norm(p[:3]))
    if kind == "frustum":
        return off + rot @ np.array([0.0, p[2] / 2, 0.0]), float(np.hypot(max(p[0], p[1]), p[2] / 2))
    if kind == "disk":
        return off, float(p[1] * max(p[2], p[3]))
    if kind == "ellipsoid":
        return off, float(max(p[:3]))
    if kind == "torus":
        return off, float(p[0] + p[1])
    return off, float(np.hypot(p[0], p[1]))  # rect


def _rotation_to(direction: np.ndarray) -> np.ndarray:
    """A rotation taking local +y onto `direction` (Rodrigues' formula)."""
    up = np.array([0.0, 1.0, 0.0])
    v = np.cross(up, direction)
    c = float(up @ direction)
    if c < -0.999999:
        return np.diag([1.0, -1.0, -1.0])
    vx = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)


# ---------------------------------------------------------------------- areas
def _box_area(p):
    hx, hy, hz = p[:, 0], p[:, 1], p[:, 2]
    return 8.0 * (hx * hy + hy * hz + hx * hz)


def _frustum_area(p):
    r0, r1, h = p[:, 0], p[:, 1], p[:, 2]
    return np.pi * (r0 + r1) * np.sqrt(h ** 2 + (r0 - r1) ** 2)


def _disk_area(p):
    return np.pi * (p[:, 1] ** 2 - p[:, 0] ** 2) * p[:, 2] * p[:, 3]


def _ellipsoid_area(p):
    ap, bp, cp = (p[:, i] ** _THOMSEN_P for i in range(3))
    full = 4.0 * np.pi * ((ap * bp + ap * cp + bp * cp) / 3.0) ** (1.0 / _THOMSEN_P)
    return np.where(p[:, 3] > 0, 0.5 * full, full)


def _torus_area(p):
    return TWO_PI * p[:, 1] * p[:, 0] * np.abs(p[:, 3] - p[:, 2])


def _rect_area(p):
    return 4.0 * p[:, 0] * p[:, 1]


_AREA = {"box": _box_area, "frustum": _frustum_area, "disk": _disk_area,
         "ellipsoid": _ellipsoid_area, "torus": _torus_area, "rect": _rect_area}


# ------------------------------------------------------------------- samplers
# Each takes per-point parameter rows (n, k) and returns local points and unit
# normals, both (n, 3).
def _unit(v):
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def _sample_box(p, rng):
    half = p[:, :3]
    n = len(half)
    # pick a face pair with probability proportional to its area
    face = np.stack([half[:, 1] * half[:, 2], half[:, 0] * half[:, 2], half[:, 0] * half[:, 1]], axis=1)
    cum = np.cumsum(face / face.sum(axis=1, keepdims=True), axis=1)
    axis = (rng.random(n)[:, None] > cum[:, :2]).sum(axis=1)
    pts = (rng.random((n, 3)) * 2.0 - 1.0) * half
    sign = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    rows = np.arange(n)
    pts[rows, axis] = sign * half[rows, axis]
    normals = np.zeros((n, 3))
    normals[rows, axis] = sign
    return pts, normals


def _sample_frustum(p, rng):
    r0, r1, h = p[:, 0], p[:, 1], p[:, 2]
    u = rng.random(len(p))
    # invert the slant CDF, whose density grows with the radius
    dr = r1 - r0
    flat = np.abs(dr) < 1e-9
    t = np.where(flat, u, (-r0 + np.sqrt(np.maximum(r0 ** 2 + dr * (r0 + r1) * u, 0.0))) / np.where(flat, 1.0, dr))
    radius = r0 + dr * t
    theta = rng.random(len(p)) * TWO_PI
    c, s = np.cos(theta), np.sin(theta)
    pts = np.stack([radius * c, t * h, radius * s], axis=1)
    return pts, _unit(np.stack([c * h, -dr, s * h], axis=1))


def _sample_disk(p, rng):
    inner, outer = p[:, 0], p[:, 1]
    radius = np.sqrt(inner ** 2 + rng.random(len(p)) * (outer ** 2 - inner ** 2))
    theta = rng.random(len(p)) * TWO_PI
    pts = np.stack([p[:, 2] * radius * np.cos(theta), np.zeros(len(p)), p[:, 3] * radius * np.sin(theta)], axis=1)
    return pts, np.tile([0.0, 1.0, 0.0], (len(p), 1))


def _sample_ellipsoid(p, rng, candidates: int = 4):
    # Scaling a uniform sphere sample is not uniform on the ellipsoid (flat
    # faces get too few points); importance-resample among a few candidates by
    # the local area stretch abc * |M^-T n| to correct most of it.
    n = len(p)
    radii = p[:, None, :3]
    d = rng.standard_normal((n, candidates, 3))
    d /= np.linalg.norm(d, axis=2, keepdims=True)
    stretch = np.linalg.norm(d / radii, axis=2)
    cum = np.cumsum(stretch, axis=1)
    pick = (rng.random(n)[:, None] * cum[:, -1:] > cum).sum(axis=1)
    pts = d[np.arange(n), np.minimum(pick, candidates - 1)] * p[:, :3]
    pts[:, 1] = np.where(p[:, 3] > 0, -np.abs(pts[:, 1]), pts[:, 1])
    return pts, _unit(pts / p[:, :3] ** 2)


def _sample_torus(p, rng):
    major, minor, start, stop = p[:, 0], p[:, 1], p[:, 2], p[:, 3]
    theta = start + rng.random(len(p)) * (stop - start)
    phi = rng.random(len(p)) * TWO_PI
    ring = major + minor * np.cos(phi)
    pts = np.stack([ring * np.cos(theta), ring * np.sin(theta), minor * np.sin(phi)], axis=1)
    normals = np.stack([np.cos(phi) * np.cos(theta), np.cos(phi) * np.sin(theta), np.sin(phi)], axis=1)
    return pts, normals


def _sample_rect(p, rng):
    uv = rng.random((len(p), 2)) * 2.0 - 1.0
    pts = np.stack([uv[:, 0] * p[:, 0], np.zeros(len(p)), uv[:, 1] * p[:, 1]], axis=1)
    return pts, np.tile([0.0, 1.0, 0.0], (len(p), 1))


_SAMPLE = {"box": _sample_box, "frustum": _sample_frustum, "disk": _sample_disk,
           "ellipsoid": _sample_ellipsoid, "torus": _sample_torus, "rect": _sample_rect}

# Which surfaces are seen from both sides: flat sheets, open tubes and bowls.
_TWO_SIDED = {"box": lambda p: np.zeros(len(p), bool), "frustum": lambda p: p[:, 3] < 0.5,
              "disk": lambda p: np.ones(len(p), bool), "ellipsoid": lambda p: p[:, 3] > 0,
              "torus": lambda p: np.zeros(len(p), bool), "rect": lambda p: np.ones(len(p), bool)}
