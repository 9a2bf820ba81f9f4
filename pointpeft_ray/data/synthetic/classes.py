"""Procedural object classes, named and ordered as ScanObjectNN's 15 labels.

Every builder takes a random generator and returns a `Shape` standing on the
floor (y = 0), roughly centred on the y axis, front towards +z, in metres.
Variation is deliberate and large: proportions, part counts, optional parts and
whole sub-styles. Several styles sit close to another class on purpose, as in
ScanObjectNN / ModelNet where desk vs table or cabinet vs box are the classic
confusions: a plain writing desk or one with a hung drawer vs a table with an
apron or a kitchen drawer; an open carton vs a square bin, a handle-less
cabinet vs a box; a vanity sink vs a cabinet; an upholstered armchair vs a
one-seat sofa; a duffel bag vs a pillow; a bookcase with lower doors vs a
cabinet. The task thus has real, learnable-but-not-trivial decision
boundaries, and a few samples are genuinely ambiguous (so no method reaches
100 % on every variant).
"""
from __future__ import annotations

import numpy as np

from .primitives import Shape, pitch, roll, yaw

# ScanObjectNN's label order (h5 files of the published release).
CLASS_NAMES = ["bag", "bin", "box", "cabinet", "chair", "desk", "display", "door",
               "shelf", "table", "bed", "pillow", "sink", "sofa", "toilet"]


def _u(rng, lo, hi) -> float:
    return float(rng.uniform(lo, hi))


def _chance(rng, p) -> bool:
    return bool(rng.random() < p)


# -------------------------------------------------------------------- helpers
def _legs(shape, corners, top_y, thickness, round_legs, splay=0.0):
    """Vertical (or slightly splayed, then always round) legs from the floor up to `top_y` at each (x, z)."""
    for x, z in corners:
        if round_legs or splay:
            foot = (x * (1.0 + splay), 0.0, z * (1.0 + splay))
            shape.cylinder_between(foot, (x, top_y, z), thickness / 2.0)
        else:
            shape.box((x, top_y / 2.0, z), (thickness, top_y, thickness))


def _corners(half_x, half_z):
    return [(sx * half_x, sz * half_z) for sx in (-1, 1) for sz in (-1, 1)]


def _open_rect_container(shape, width, depth, height, wall, base_y=0.0):
    """Four walls and a floor: an open-topped rectangular box (bins, open boxes)."""
    y = base_y + height / 2.0
    shape.box((0, y, (depth - wall) / 2), (width, height, wall))
    shape.box((0, y, -(depth - wall) / 2), (width, height, wall))
    shape.box(((width - wall) / 2, y, 0), (wall, height, depth - 2 * wall))
    shape.box((-(width - wall) / 2, y, 0), (wall, height, depth - 2 * wall))
    shape.box((0, base_y + wall / 2, 0), (width - 2 * wall, wall, depth - 2 * wall))


def _front_panels(shape, x0, x1, y0, y1, z_front, rows, cols, rng, handles=True):
    """Doors / drawer fronts slightly proud of a carcass front, with small handles."""
    gap, thick = _u(rng, 0.004, 0.012), _u(rng, 0.01, 0.022)
    ys, xs = np.linspace(y0, y1, rows + 1), np.linspace(x0, x1, cols + 1)
    bar = _chance(rng, 0.5)
    for r in range(rows):
        for c in range(cols):
            cx, cy = (xs[c] + xs[c + 1]) / 2, (ys[r] + ys[r + 1]) / 2
            w, h = xs[c + 1] - xs[c] - gap, ys[r + 1] - ys[r] - gap
            shape.box((cx, cy, z_front + thick / 2), (w, h, thick))
            if not handles:
                continue
            hz = z_front + thick + 0.012
            if rows > 1 or cols == 1:  # drawer: handle centred near the top edge
                hy, hx = cy + h * 0.25, cx
            else:  # door pair: handles near the meeting edge
                hy, hx = cy, cx + (w * 0.4 if c == 0 else -w * 0.4)
            if bar:
                shape.box((hx, hy, hz), (min(0.12, w * 0.4), 0.012, 0.02))
            else:
                shape.ellipsoid((hx, hy, hz), (0.014, 0.014, 0.014))


# ------------------------------------------------------------------- builders
def build_bag(rng) -> Shape:
    s = Shape()
    style = rng.integers(3)
    if style == 0:  # tote: boxy body, two handles on top
        w, h, d = _u(rng, 0.3, 0.5), _u(rng, 0.25, 0.45), _u(rng, 0.1, 0.22)
        s.box((0, h / 2, 0), (w, h, d))
        for z in (-d * 0.3, d * 0.3):
            s.torus_arc((0, h, z), _u(rng, 0.25, 0.4) * w, _u(rng, 0.007, 0.014), 0.0, np.pi)
    elif style == 1:  # duffel: elongated soft body, carry handles, optional strap
        w, r = _u(rng, 0.45, 0.75), _u(rng, 0.11, 0.19)
        s.ellipsoid((0, r * 0.9, 0), (w / 2, r * 0.9, r * _u(rng, 0.8, 1.1)))
        for z in (-0.035, 0.035):
            s.torus_arc((0, r * 1.75, z), _u(rng, 0.06, 0.11), 0.01, 0.0, np.pi)
        if _chance(rng, 0.5):
            s.torus_arc((0, r * 1.6, 0), w * 0.45, 0.008, 0.15, np.pi - 0.15)
    else:  # backpack: tall soft body, front pocket, top loop
        w, h, d = _u(rng, 0.28, 0.38), _u(rng, 0.4, 0.55), _u(rng, 0.16, 0.26)
        s.ellipsoid((0, h / 2, 0), (w / 2, h / 2, d / 2))
        s.ellipsoid((0, h * _u(rng, 0.3, 0.4), d * 0.4), (w * 0.36, h * 0.2, d * 0.22))
        s.torus_arc((0, h * 0.98, -d * 0.1), 0.04, 0.008, 0.0, np.pi)
    return s


def build_bin(rng) -> Shape:
    s = Shape()
    h, wall = _u(rng, 0.3, 0.8), _u(rng, 0.006, 0.02)
    lid = _chance(rng, 0.3)
    round_bin = _chance(rng, 0.55)
    if round_bin:  # round, often tapering outwards like a waste paper basket
        r0 = _u(rng, 0.12, 0.22)
        r1 = r0 * _u(rng, 1.0, 1.3)
        s.frustum((0, 0, 0), r0, h, r1, caps=(True, False))
        s.frustum((0, wall, 0), r0 - wall, h - wall, r1 - wall, caps=(True, False))
        s.disk((0, h, 0), r1, inner=r1 - wall)
        if lid:
            s.ellipsoid((0, h, 0), (r1 * 1.02, _u(rng, 0.02, 0.12), r1 * 1.02))
    else:  # square
        w, d = _u(rng, 0.25, 0.45), _u(rng, 0.2, 0.4)
        _open_rect_container(s, w, d, h, wall)
        if lid:
            angle = _u(rng, 0.0, 1.3)  # swing lid, from closed to wide open
            s.box((0, h + 0.01 + np.sin(angle) * d / 2, -d / 2 + np.cos(angle) * d / 2),
                  (w * 1.02, 0.015, d * 1.02), rotation=pitch(-angle))
    if _chance(rng, 0.2):  # foot pedal sticking out at the front
        front = r0 if round_bin else d / 2
        s.box((0, 0.02, front + 0.04), (0.08, 0.02, 0.08))
    return s


def _carton_flaps(s, rng, w, d, h):
    """2-4 flaps hinged on the top edges; angle 0 = closed flat, pi = folded down outside."""
    for side in rng.permutation(4)[: rng.integers(2, 5)]:
        a = _u(rng, 0.4, 3.6)
        if side < 2:  # front / back flaps, hinged along x, half the depth long
            sign, length = (1 if side == 0 else -1), d / 2
            direction = np.array([0.0, np.sin(a), -sign * np.cos(a)])
            rot = pitch(np.pi + a) if sign > 0 else pitch(-a)  # local +z -> direction
            hinge = np.array([0.0, h, sign * d / 2])
            s.rect(hinge + direction * length / 2, w, length, rotation=rot)
        else:  # left / right flaps, hinged along z
            sign, length = (1 if side == 2 else -1), w / 2
            direction = np.array([-sign * np.cos(a), np.sin(a), 0.0])
            rot = roll(np.pi - a) if sign > 0 else roll(a)  # local +x -> direction
            hinge = np.array([sign * w / 2, h, 0.0])
            s.rect(hinge + direction * length / 2, length, d, rotation=rot)


def build_box(rng) -> Shape:
    s = Shape()
    base = _u(rng, 0.25, 0.7)
    w, h, d = base * _u(rng, 0.7, 1.5), base * _u(rng, 0.45, 1.3), base * _u(rng, 0.6, 1.1)
    if _chance(rng, 0.35):  # opened carton: thin walls and some flaps folded out
        _open_rect_container(s, w, d, h, 0.006)
        _carton_flaps(s, rng, w, d, h)
    else:
        s.box((0, h / 2, 0), (w, h, d))
        if _chance(rng, 0.25):  # a second, smaller box stacked on top
            w2, h2, d2 = w * _u(rng, 0.5, 0.9), h * _u(rng, 0.3, 0.8), d * _u(rng, 0.5, 0.9)
            s.box((_u(rng, -0.1, 0.1) * w, h + h2 / 2, 0), (w2, h2, d2), rotation=yaw(_u(rng, -0.4, 0.4)))
    return s


def build_cabinet(rng) -> Shape:
    s = Shape()
    w, h, d = _u(rng, 0.4, 1.2), _u(rng, 0.45, 1.9), _u(rng, 0.35, 0.6)
    base = _u(rng, 0.0, 0.14) if _chance(rng, 0.6) else 0.0
    if base > 0.02:
        if _chance(rng, 0.5):
            s.box((0, base / 2, -0.02), (w - 0.05, base, d - 0.05))  # recessed plinth
        else:
            _legs(s, _corners(w / 2 - 0.04, d / 2 - 0.04), base, 0.035, _chance(rng, 0.5))
    s.box((0, base + (h - base) / 2, 0), (w, h - base, d))
    if _chance(rng, 0.4):  # worktop overhanging the carcass
        s.box((0, h + 0.015, 0.015), (w + 0.03, 0.03, d + 0.03))
    rows = int(rng.integers(1, 5)) if _chance(rng, 0.5) else 1
    cols = 1 if rows > 1 else int(rng.integers(1, 3))
    if _chance(rng, 0.85):  # else a flush, handle-less front: nearly a plain box
        _front_panels(s, -w / 2 + 0.01, w / 2 - 0.01, base + 0.01, h - 0.01, d / 2, rows, cols, rng)
    return s


def _chair_base(s, rng, seat_h, sw, sd):
    style = rng.random()
    thick = _u(rng, 0.025, 0.05)
    if style < 0.6:  # four legs, straight or splayed
        _legs(s, _corners(sw / 2 - 0.03, sd / 2 - 0.03), seat_h, thick, _chance(rng, 0.5),
              splay=_u(rng, 0.0, 0.15) if _chance(rng, 0.4) else 0.0)
        if _chance(rng, 0.3):  # stretchers between the legs
            s.box((0, seat_h * 0.3, sd / 2 - 0.03), (sw - 0.06, 0.02, 0.02))
            s.box((0, seat_h * 0.3, -sd / 2 + 0.03), (sw - 0.06, 0.02, 0.02))
    elif style < 0.88:  # office chair: gas lift, five spokes, casters
        hub = _u(rng, 0.08, 0.12)
        s.frustum((0, hub, 0), 0.025, seat_h - hub - 0.05, caps=(False, False))
        s.box((0, seat_h - 0.05, 0), (0.16, 0.05, 0.16))
        spoke = _u(rng, 0.25, 0.33)
        for k in range(5):
            a = k * 2 * np.pi / 5
            s.box((np.sin(a) * spoke / 2, hub, np.cos(a) * spoke / 2), (0.04, 0.03, spoke), rotation=yaw(a))
            s.ellipsoid((np.sin(a) * spoke, 0.03, np.cos(a) * spoke), (0.025, 0.03, 0.025))
    else:  # sled base: two floor runners and uprights
        for x in (-sw / 2 + 0.03, sw / 2 - 0.03):
            s.cylinder_between((x, 0.01, -sd / 2), (x, 0.01, sd / 2), 0.012)
            s.cylinder_between((x, 0.01, sd / 2 - 0.02), (x, seat_h, sd / 2 - 0.04), 0.012)
            s.cylinder_between((x, 0.01, -sd / 2 + 0.02), (x, seat_h, -sd / 2 + 0.04), 0.012)


def _armchair(rng) -> Shape:
    """Upholstered armchair: solid base, thick back and arms (the chair that looks like a sofa)."""
    s = Shape()
    w, d, seat_h = _u(rng, 0.6, 0.85), _u(rng, 0.6, 0.85), _u(rng, 0.38, 0.46)
    arm_w, back_t = _u(rng, 0.08, 0.16), _u(rng, 0.1, 0.2)
    s.box((0, seat_h / 2, 0), (w, seat_h, d))
    top = seat_h + _u(rng, 0.35, 0.55)
    s.box((0, top / 2, -d / 2 + back_t / 2), (w, top, back_t))
    arm_h = seat_h + _u(rng, 0.15, 0.25)
    for x in (-w / 2 + arm_w / 2, w / 2 - arm_w / 2):
        s.box((x, arm_h / 2, 0), (arm_w, arm_h, d))
    return s


def build_chair(rng) -> Shape:
    if _chance(rng, 0.15):
        return _armchair(rng)
    s = Shape()
    seat_h, sw, sd, st = _u(rng, 0.38, 0.5), _u(rng, 0.4, 0.56), _u(rng, 0.38, 0.52), _u(rng, 0.03, 0.09)
    s.box((0, seat_h - st / 2, 0), (sw, st, sd))
    _chair_base(s, rng, seat_h - st, sw, sd)
    back_h, back_t, tilt = _u(rng, 0.22, 0.6), _u(rng, 0.02, 0.07), _u(rng, 0.0, 0.3)
    rot = pitch(-tilt)
    back_c = np.array([0.0, seat_h, -sd / 2 + back_t / 2]) + rot @ np.array([0.0, back_h / 2, 0.0])
    if _chance(rng, 0.65):  # solid back
        s.box(back_c, (sw * _u(rng, 0.85, 1.0), back_h, back_t), rotation=rot)
    else:  # top rail and 2-5 slats
        slats = int(rng.integers(2, 6))
        top = back_c + rot @ np.array([0.0, back_h / 2 - 0.04, 0.0])
        s.box(top, (sw, 0.08, back_t), rotation=rot)
        for x in np.linspace(-sw / 2 + 0.03, sw / 2 - 0.03, slats):
            s.box(back_c + np.array([x, -0.04, 0.0]), (0.035, back_h - 0.08, back_t * 0.7), rotation=rot)
    if _chance(rng, 0.3):  # armrests on posts
        arm_y = seat_h + _u(rng, 0.17, 0.26)
        for x in (-sw / 2 - 0.02, sw / 2 + 0.02):
            s.box((x, arm_y, 0), (0.05, 0.03, sd * 0.85))
            s.box((x, (arm_y + seat_h) / 2, sd * 0.3), (0.025, arm_y - seat_h, 0.025))
    return s


def build_desk(rng) -> Shape:
    s = Shape()
    w, d, h, tt = _u(rng, 0.9, 1.7), _u(rng, 0.5, 0.8), _u(rng, 0.7, 0.78), _u(rng, 0.02, 0.05)
    s.box((0, h - tt / 2, 0), (w, tt, d))
    under = h - tt
    style = rng.random()
    panel_t = _u(rng, 0.02, 0.04)
    if style < 0.1:  # plain writing desk on four legs: only the optional panels below tell it from a table
        lt = _u(rng, 0.03, 0.05)
        _legs(s, _corners(w / 2 - lt, d / 2 - lt), under, lt, _chance(rng, 0.4))
    elif style < 0.4:  # two full-depth side panels
        for x in (-w / 2 + panel_t / 2, w / 2 - panel_t / 2):
            s.box((x, under / 2, 0), (panel_t, under, d * _u(rng, 0.9, 1.0)))
    elif style < 0.75:  # one side panel + a drawer pedestal
        side = 1 if _chance(rng, 0.5) else -1
        s.box((-side * (w / 2 - panel_t / 2), under / 2, 0), (panel_t, under, d * 0.95))
        pw = _u(rng, 0.35, 0.45)
        px = side * (w / 2 - pw / 2)
        s.box((px, under / 2, -0.01), (pw, under, d * 0.92))
        _front_panels(s, px - pw / 2 + 0.01, px + pw / 2 - 0.01, 0.02, under - 0.01, d * 0.46 - 0.01,
                      int(rng.integers(2, 5)), 1, rng)
    else:  # four legs and a drawer box hung under the top (close to a table)
        lt = _u(rng, 0.03, 0.05)
        _legs(s, _corners(w / 2 - lt, d / 2 - lt), under, lt, _chance(rng, 0.4))
        dw, dh = _u(rng, 0.3, 0.55), _u(rng, 0.1, 0.17)
        dx = _u(rng, -1, 1) * (w / 2 - dw / 2 - 0.05)
        s.box((dx, under - dh / 2, 0), (dw, dh, d * 0.85))
        _front_panels(s, dx - dw / 2, dx + dw / 2, under - dh, under, d * 0.425, 1, 1, rng)
    if _chance(rng, 0.5):  # modesty panel at the back
        ph = _u(rng, 0.25, 0.5)
        s.box((0, under - ph / 2, -d / 2 + 0.03), (w * 0.9, ph, 0.015))
    if _chance(rng, 0.2):  # hutch: a shallow open shelf on the top at the back
        hh, hd = _u(rng, 0.25, 0.45), _u(rng, 0.2, 0.3)
        for x in (-w / 2 + 0.01, w / 2 - 0.01):
            s.box((x, h + hh / 2, -d / 2 + hd / 2), (0.02, hh, hd))
        s.box((0, h + hh, -d / 2 + hd / 2), (w, 0.02, hd))
    return s


def build_display(rng) -> Shape:
    s = Shape()
    pw = _u(rng, 0.4, 0.8)
    ph, pt = pw * _u(rng, 0.5, 0.72), _u(rng, 0.012, 0.04)
    lift = _u(rng, 0.07, 0.2)
    tilt = _u(rng, -0.05, 0.2)
    crt = _chance(rng, 0.1)
    screens = 2 if _chance(rng, 0.12) else 1
    for k in range(screens):
        cx = 0.0 if screens == 1 else (k - 0.5) * pw * 1.02
        turn = yaw(0.0 if screens == 1 else (0.25 if k == 0 else -0.25))
        rot = turn @ pitch(-tilt)
        s.box((cx, lift + ph / 2, 0), (pw, ph, pt), rotation=rot)
        if crt:  # old tube monitor: deep tapered body behind the glass
            s.box((cx, lift + ph / 2, -ph * 0.4), (pw * 0.8, ph * 0.8, ph * 0.75), rotation=rot)
        elif _chance(rng, 0.5):  # electronics bulge on the back
            s.box((cx, lift + ph / 2, -pt), (pw * 0.5, ph * 0.5, _u(rng, 0.02, 0.06)), rotation=rot)
        neck_z = -pt / 2 - 0.02
        s.box((cx, (lift + ph / 2) / 2, neck_z), (_u(rng, 0.04, 0.08), lift + ph / 2, 0.025))
        if _chance(rng, 0.5):
            s.disk((cx, 0.008, neck_z), _u(rng, 0.09, 0.13), stretch=(_u(rng, 1.0, 1.6), 1.0))
        else:
            s.box((cx, 0.008, neck_z), (_u(rng, 0.15, 0.3), 0.016, _u(rng, 0.12, 0.2)))
    return s


def build_door(rng) -> Shape:
    s = Shape()
    w, h, t = _u(rng, 0.7, 1.0), _u(rng, 1.9, 2.2), _u(rng, 0.03, 0.05)
    fw, fd = _u(rng, 0.04, 0.09), _u(rng, 0.1, 0.22)
    for x in (-(w + fw) / 2, (w + fw) / 2):  # jambs and head of the frame
        s.box((x, (h + fw) / 2, 0), (fw, h + fw, fd))
    s.box((0, h + fw / 2, 0), (w, fw, fd))
    if _chance(rng, 0.5):  # wall stubs either side of the frame
        stub = _u(rng, 0.1, 0.5)
        for sign in (-1, 1):
            s.box((sign * (w / 2 + fw + stub / 2), (h + fw) / 2 + 0.05, 0), (stub, h + fw + 0.1, fd))
    angle = _u(rng, 0.0, 1.2) if _chance(rng, 0.5) else _u(rng, 0.0, 0.08)
    hinge = np.array([-w / 2, 0.0, 0.0])
    rot = yaw(-angle)  # swings about its left edge
    s.box(hinge + rot @ np.array([w / 2, h / 2, 0.0]), (w - 0.005, h - 0.01, t), rotation=rot)
    if _chance(rng, 0.5):  # raised panels on both faces
        rows = int(rng.integers(2, 4))
        for r in range(rows):
            cy = h * (r + 0.5) / rows
            for side in (-1, 1):
                c = hinge + rot @ np.array([w / 2, cy, side * t / 2])
                s.box(c, (w * 0.7, h / rows * 0.75, 0.01), rotation=rot)
    for side in (-1, 1):  # lever handles
        c = hinge + rot @ np.array([w - 0.08, _u(rng, 0.95, 1.1), side * (t / 2 + 0.03)])
        s.box(c, (0.12, 0.018, 0.018), rotation=rot)
    return s


def build_shelf(rng) -> Shape:
    s = Shape()
    w, h, d, t = _u(rng, 0.6, 1.3), _u(rng, 0.7, 2.0), _u(rng, 0.25, 0.45), _u(rng, 0.015, 0.03)
    boards = int(rng.integers(2, 6))
    if _chance(rng, 0.7):  # board construction: sides, top, bottom, maybe a back
        for x in (-w / 2 + t / 2, w / 2 - t / 2):
            s.box((x, h / 2, 0), (t, h, d))
        s.box((0, h - t / 2, 0), (w - 2 * t, t, d))
        s.box((0, 0.04, 0), (w - 2 * t, t, d))
        if _chance(rng, 0.6):
            s.box((0, h / 2, -d / 2 + 0.004), (w - 2 * t, h, 0.008))
    else:  # open metal rack: four posts
        _legs(s, _corners(w / 2 - 0.015, d / 2 - 0.015), h, 0.03, _chance(rng, 0.5))
    levels = np.linspace(0.04, h - t, boards + 2)[1:-1] + rng.uniform(-0.03, 0.03, boards)
    for y in levels:
        s.box((0, y, 0), (w - 2 * t, t, d * 0.97))
    if _chance(rng, 0.15) and boards >= 2:  # doors closing the lowest compartment (half a cabinet)
        _front_panels(s, -w / 2 + t, w / 2 - t, 0.04, levels[0], d / 2, 1, 2, rng)
    if _chance(rng, 0.35):  # a few books / items on some boards
        for y in rng.choice(levels, size=min(2, boards), replace=False):
            for _ in range(int(rng.integers(1, 4))):
                bw, bh = _u(rng, 0.05, 0.25), _u(rng, 0.12, 0.25)
                s.box((_u(rng, -0.35, 0.35) * w, y + bh / 2, 0), (bw, bh, d * 0.7))
    return s


def build_table(rng) -> Shape:
    s = Shape()
    style = rng.random()
    tt = _u(rng, 0.02, 0.06)
    if style < 0.15:  # bench-like: long, narrow, low
        w, d, h = _u(rng, 1.1, 1.8), _u(rng, 0.3, 0.45), _u(rng, 0.4, 0.5)
    elif style < 0.4:  # coffee table
        w, d, h = _u(rng, 0.6, 1.3), _u(rng, 0.45, 0.8), _u(rng, 0.35, 0.5)
    else:  # dining / side table
        w, d, h = _u(rng, 0.6, 1.8), _u(rng, 0.55, 1.0), _u(rng, 0.68, 0.78)
    d = min(d, w)
    under = h - tt
    lt = _u(rng, 0.03, 0.07)
    if _chance(rng, 0.3):  # round top
        r = w / 2 * _u(rng, 0.55, 0.8)
        s.frustum((0, under, 0), r, tt)
        if _chance(rng, 0.5):  # pedestal
            s.frustum((0, 0, 0), _u(rng, 0.04, 0.08), under, caps=(False, False))
            s.disk((0, 0.01, 0), r * _u(rng, 0.45, 0.7))
        else:
            n = int(rng.integers(3, 5))
            corners = [(np.sin(a) * r * 0.75, np.cos(a) * r * 0.75) for a in np.arange(n) * 2 * np.pi / n]
            _legs(s, corners, under, lt, True)
        return s
    s.box((0, h - tt / 2, 0), (w, tt, d))
    inset = _u(rng, 0.02, 0.12)
    hx, hz = w / 2 - inset - lt / 2, d / 2 - inset - lt / 2
    if _chance(rng, 0.15):  # trestle ends joined by a stretcher (reads like a desk's panels)
        for x in (-hx, hx):
            s.box((x, under / 2, 0), (0.04, under, d * 0.8))
        s.box((0, under * 0.3, 0), (2 * hx, 0.05, 0.05))
    else:
        _legs(s, _corners(hx, hz), under, lt, _chance(rng, 0.4))
    if _chance(rng, 0.5):  # apron under the top
        ah = _u(rng, 0.05, 0.12)
        s.box((0, under - ah / 2, hz), (2 * hx, ah, 0.02))
        s.box((0, under - ah / 2, -hz), (2 * hx, ah, 0.02))
        s.box((hx, under - ah / 2, 0), (0.02, ah, 2 * hz))
        s.box((-hx, under - ah / 2, 0), (0.02, ah, 2 * hz))
    if h > 0.6 and _chance(rng, 0.12):  # kitchen table with a cutlery drawer (reads like a desk)
        dw = _u(rng, 0.3, 0.5) * w
        s.box((0, under - 0.07, 0), (dw, 0.12, 2 * hz * 0.9))
    if h < 0.55 and _chance(rng, 0.35):  # lower shelf of a coffee table
        s.box((0, _u(rng, 0.08, 0.18), 0), (2 * hx, 0.02, 2 * hz))
    return s


def build_bed(rng) -> Shape:
    s = Shape()
    w, l = _u(rng, 0.9, 1.9), _u(rng, 1.9, 2.2)
    base_h, mat_h = _u(rng, 0.1, 0.35), _u(rng, 0.15, 0.3)
    if _chance(rng, 0.5):  # solid divan base
        s.box((0, base_h / 2, 0), (w, base_h, l))
    else:  # frame rails on legs
        rail = _u(rng, 0.08, 0.16)
        for x in (-w / 2 + 0.02, w / 2 - 0.02):
            s.box((x, base_h - rail / 2, 0), (0.04, rail, l))
        for z in (-l / 2 + 0.02, l / 2 - 0.02):
            s.box((0, base_h - rail / 2, z), (w, rail, 0.04))
        _legs(s, _corners(w / 2 - 0.03, l / 2 - 0.03), base_h - rail, 0.05, _chance(rng, 0.5))
        s.box((0, base_h - 0.01, 0), (w - 0.08, 0.02, l - 0.08))
    top = base_h + mat_h
    s.box((0, base_h + mat_h / 2, 0.01), (w - 0.03, mat_h, l - 0.04))
    head_h, head_t = _u(rng, 0.3, 0.9), _u(rng, 0.04, 0.12)
    s.box((0, (top + head_h) / 2, -l / 2 - head_t / 2), (w + 0.04, top + head_h, head_t))
    if _chance(rng, 0.35):  # footboard
        fh = _u(rng, 0.0, 0.3)
        s.box((0, (top + fh) / 2, l / 2 + 0.03), (w + 0.04, top + fh, 0.05))
    for k in range(int(rng.integers(0, 3)) if w > 1.2 else int(rng.integers(0, 2))):
        px = 0.0 if w <= 1.2 else (k - 0.5) * w * 0.45
        s.ellipsoid((px, top + 0.05, -l / 2 + 0.3), (_u(rng, 0.25, 0.33), _u(rng, 0.05, 0.09), 0.2))
    return s


def build_pillow(rng) -> Shape:
    s = Shape()
    count = 2 if _chance(rng, 0.2) else 1
    y = 0.0
    for _ in range(count):
        a, b, c = _u(rng, 0.2, 0.36), _u(rng, 0.04, 0.11), _u(rng, 0.15, 0.26)
        if count == 1 and _chance(rng, 0.4):  # propped up, leaning back
            lean = _u(rng, 0.9, 1.45)
            half_height = np.hypot(b * np.cos(lean), c * np.sin(lean))  # vertical half-extent
            s.ellipsoid((0, half_height, 0), (a, b, c), rotation=pitch(-lean))
        else:
            s.ellipsoid((_u(rng, -0.04, 0.04), y + b, 0), (a, b, c), rotation=yaw(_u(rng, -0.5, 0.5)))
            y += 2 * b * 0.85
    return s


def _sink_bowl(s, rng, rim_y, bw, bd, z=0.0):
    """Bowl below the rim, a flat rim ring around it, and a tap behind it."""
    depth = _u(rng, 0.1, 0.2)
    s.ellipsoid((0, rim_y, z), (bw / 2, depth, bd / 2), lower_half=True)
    rim = _u(rng, 0.03, 0.08)
    s.disk((0, rim_y, z), 1.0 + rim / min(bw, bd) * 2, inner=1.0, stretch=(bw / 2, bd / 2))
    tap_z = z - bd / 2 - rim * 0.6
    s.cylinder_between((0, rim_y, tap_z), (0, rim_y + _u(rng, 0.1, 0.25), tap_z), 0.012)
    s.box((0, rim_y + 0.12, tap_z + 0.05), (0.025, 0.02, 0.11))
    return depth


def build_sink(rng) -> Shape:
    s = Shape()
    style = rng.random()
    bw, bd = _u(rng, 0.35, 0.6), _u(rng, 0.3, 0.45)
    rim_y = _u(rng, 0.78, 0.9)
    if style < 0.35:  # pedestal basin
        depth = _sink_bowl(s, rng, rim_y, bw, bd)
        s.frustum((0, 0, 0), _u(rng, 0.09, 0.14), rim_y - depth * 0.7, _u(rng, 0.06, 0.09),
                  caps=(False, False))
    elif style < 0.6:  # wall-hung basin with a bracket
        depth = _sink_bowl(s, rng, rim_y, bw, bd)
        s.box((0, rim_y - depth - 0.1, -bd / 2), (bw * 0.5, 0.2, 0.04))
    else:  # vanity: a cabinet with a countertop around an inset bowl
        cw, cd = bw + _u(rng, 0.15, 0.6), bd + _u(rng, 0.1, 0.2)
        depth = _sink_bowl(s, rng, rim_y, bw, bd, z=0.02)
        s.box((0, (rim_y - 0.03) / 2, 0), (cw, rim_y - 0.03, cd))
        side = (cw - bw) / 2
        s.box((-(bw + side) / 2, rim_y - 0.015, 0), (side, 0.03, cd + 0.02))
        s.box(((bw + side) / 2, rim_y - 0.015, 0), (side, 0.03, cd + 0.02))
        _front_panels(s, -cw / 2, cw / 2, 0.08, rim_y - 0.06, cd / 2, 1, int(rng.integers(1, 3)), rng)
    if _chance(rng, 0.3):  # splash-back
        s.box((0, rim_y + 0.1, -bd / 2 - 0.09), (bw + 0.2, 0.2, 0.02))
    return s


def build_sofa(rng) -> Shape:
    s = Shape()
    w, d = (_u(rng, 0.75, 1.0) if _chance(rng, 0.15) else _u(rng, 1.0, 2.4)), _u(rng, 0.7, 1.0)
    seat_h, cush = _u(rng, 0.38, 0.48), _u(rng, 0.08, 0.18)
    leg_h = _u(rng, 0.03, 0.14) if _chance(rng, 0.5) else 0.0
    base_top = seat_h - cush
    s.box((0, (leg_h + base_top) / 2, 0), (w, base_top - leg_h, d))
    if leg_h:
        _legs(s, _corners(w / 2 - 0.05, d / 2 - 0.05), leg_h, 0.04, _chance(rng, 0.5))
    back_t, back_h = _u(rng, 0.14, 0.3), _u(rng, 0.3, 0.55)
    arms = int(rng.choice([0, 1, 2, 2, 2]))
    arm_w = _u(rng, 0.08, 0.25) if arms else 0.0
    inner = w - 2 * arm_w if arms == 2 else w - arm_w
    cx = 0.0 if arms != 1 else arm_w / 2
    n = max(1, min(3, int(round(inner / _u(rng, 0.55, 0.8)))))
    for k in range(n):  # seat cushions
        x = cx - inner / 2 + inner * (k + 0.5) / n
        s.box((x, base_top + cush / 2, back_t / 2), (inner / n - 0.01, cush, d - back_t))
    tilt = pitch(-_u(rng, 0.0, 0.2))
    s.box(np.array([0, base_top, -d / 2 + back_t / 2]) + tilt @ np.array([0, (cush + back_h) / 2, 0]),
          (w, cush + back_h, back_t), rotation=tilt)
    arm_h = seat_h + _u(rng, 0.12, 0.26)
    for side in ((-1, 1) if arms == 2 else ((-1,) if arms == 1 else ())):
        x = side * (w / 2 - arm_w / 2)
        s.box((x, (leg_h + arm_h) / 2, 0), (arm_w, arm_h - leg_h, d))
    if w > 1.5 and _chance(rng, 0.15):  # chaise end (L shape)
        ext = _u(rng, 0.5, 0.8)
        s.box((w / 2 - 0.35, (leg_h + seat_h) / 2, d / 2 + ext / 2), (0.7, seat_h - leg_h, ext))
    return s


def build_toilet(rng) -> Shape:
    s = Shape()
    seat_h = _u(rng, 0.38, 0.46)
    a, c = _u(rng, 0.16, 0.21), _u(rng, 0.21, 0.28)
    bowl_depth = _u(rng, 0.18, 0.28)
    wall_hung = _chance(rng, 0.2)
    z0 = 0.05
    s.ellipsoid((0, seat_h - 0.02, z0), (a, bowl_depth, c), lower_half=True)
    if not wall_hung:
        s.frustum((0, 0, z0 - 0.03), _u(rng, 0.11, 0.15), seat_h - bowl_depth * 0.6, _u(rng, 0.08, 0.11),
                  caps=(False, False))
    s.disk((0, seat_h, z0), 1.0, inner=_u(rng, 0.55, 0.75), stretch=(a, c))
    s.disk((0, seat_h - 0.02, z0), 1.0, inner=0.7, stretch=(a, c))
    if _chance(rng, 0.5):  # lid down
        s.disk((0, seat_h + 0.025, z0), 1.0, stretch=(a, c))
    else:  # lid up, leaning against the tank / wall
        s.disk((0, seat_h + c * 0.9, z0 - c - 0.02), 1.0, stretch=(a, c), rotation=pitch(-np.pi / 2 + 0.15))
    tw, th, td = _u(rng, 0.34, 0.5), _u(rng, 0.28, 0.42), _u(rng, 0.14, 0.22)
    if wall_hung:  # flush plate on a wall box instead of a tank
        s.box((0, (seat_h + th) / 2, z0 - c - 0.06), (tw, seat_h + th, 0.1))
    else:
        tank_y = seat_h - 0.05
        s.box((0, tank_y + th / 2, z0 - c - td / 2 + 0.03), (tw, th, td))
        s.box((0, tank_y + th + 0.01, z0 - c - td / 2 + 0.03), (tw + 0.02, 0.02, td + 0.02))
    return s


BUILDERS = [build_bag, build_bin, build_box, build_cabinet, build_chair, build_desk, build_display,
            build_door, build_shelf, build_table, build_bed, build_pillow, build_sink, build_sofa,
            build_toilet]
assert len(BUILDERS) == len(CLASS_NAMES)
