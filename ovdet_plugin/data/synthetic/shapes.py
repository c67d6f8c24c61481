"""The object kinds of the generated dataset: silhouettes, icons and textured objects, each named
by plain English words.

Every kind is drawn from primitives in a unit frame (x right, y down, the object inside
[-1, 1] x [-1, 1], "up" is -y): ``parts`` are polygons whose union is the object (``cut`` polygons
are removed from it), and ``pattern`` polygons are painted inside it in a second colour, in order
(the mask does not change). No kind has a hole in its silhouette: COCO/LVIS polygons cannot
represent holes, and the generator keeps masks exact (tests check every kind at many poses).

The categories were chosen to differ in silhouette or internal pattern, never only by colour:
ENVIRONMENT.md records that colour x shape categories are hard for a tiny CLIP. Colours are
random per object and independent of the category.
"""

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Tuple

import numpy as np

__all__ = ["Shape", "ObjectKind", "OBJECT_KINDS", "kind_by_name"]

Poly = np.ndarray  # (N, 2) float points in the unit frame


@dataclass
class Shape:
    """Polygons in the unit frame. ``pattern`` entries are (polygon, colour index) with colour
    index 0 = the object's main colour, 1 = its second colour, painted in order."""

    parts: List[Poly]
    cuts: List[Poly] = field(default_factory=list)
    pattern: List[Tuple[Poly, int]] = field(default_factory=list)


@dataclass(frozen=True)
class ObjectKind:
    """A category of the generated dataset.

    Attributes:
        name: the category name used in annotations and captions ("lightning bolt").
        plural: its plural ("lightning bolts").
        tier: the planned LVIS frequency group "f", "c" or "r" (the JSON's ``frequency`` is then
            computed from image counts; see ``generator.frequency_of``).
        upright: drawn within +-max_tilt of upright (icons such as houses), else any rotation.
        draw: ``rng -> Shape`` (a little shape variety per instance).
        definition: a one-line description, written as the LVIS ``def`` field.
    """

    name: str
    plural: str
    tier: str
    upright: bool
    draw: Callable[[np.random.Generator], Shape]
    definition: str


# ---- primitives ------------------------------------------------------------------------------
def ellipse(cx, cy, rx, ry, angle=0.0, n=40, a0=0.0, a1=2 * math.pi) -> Poly:
    t = np.linspace(a0, a1, n, endpoint=not math.isclose(a1 - a0, 2 * math.pi))
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], 1)


def circle(cx, cy, r, n=40) -> Poly:
    return ellipse(cx, cy, r, r, n=n)


def rect(x0, y0, x1, y1) -> Poly:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)


def poly(*pts) -> Poly:
    return np.array(pts, float).reshape(-1, 2)


def arc_band(cx, cy, r_in, r_out, a0, a1, n=24) -> Poly:
    """A band between two circles from angle a0 to a1 (radians, y down): no hole if a1-a0<2pi."""
    outer = ellipse(cx, cy, r_out, r_out, n=n, a0=a0, a1=a1)
    inner = ellipse(cx, cy, r_in, r_in, n=n, a0=a0, a1=a1)[::-1]
    return np.concatenate([outer, inner])


def regular(n, r=1.0, phase=-math.pi / 2) -> Poly:
    t = phase + np.arange(n) * 2 * math.pi / n
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _u(rng, lo, hi):
    return float(rng.uniform(lo, hi))


# ---- the kinds -------------------------------------------------------------------------------
def _star(rng):
    k, inner = int(rng.choice([5, 5, 6])), _u(rng, 0.38, 0.5)
    t = -math.pi / 2 + np.arange(2 * k) * math.pi / k
    r = np.where(np.arange(2 * k) % 2 == 0, 1.0, inner)
    return Shape([np.stack([r * np.cos(t), r * np.sin(t)], 1)])


def _heart(rng):
    t = np.linspace(0, 2 * math.pi, 60, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return Shape([np.stack([x / 17, (y + 2.5) / 15], 1)])


def _arrow(rng):
    w = _u(rng, 0.14, 0.22)
    return Shape([rect(-1, -w, 0.15, w), poly((0.1, -0.6), (1, 0), (0.1, 0.6))])


def _cross(rng):
    w = _u(rng, 0.25, 0.34)
    return Shape([rect(-1, -w, 1, w), rect(-w, -1, w, 1)])


def _triangle(rng):
    return Shape([regular(3, 1.0, -math.pi / 2) + [0, 0.2]])


def _house(rng):
    return Shape(
        [rect(-0.7, -0.1, 0.7, 1.0), poly((-0.95, -0.05), (0, -1), (0.95, -0.05))],
        cuts=[rect(-0.18, 0.45, 0.18, 1.01)],
        pattern=[(rect(0.3, 0.15, 0.55, 0.4), 1), (rect(-0.55, 0.15, -0.3, 0.4), 1)],
    )


def _tree(rng):
    return Shape(
        [
            rect(-0.15, 0.5, 0.15, 1.0),
            poly((-0.85, 0.6), (0, -0.1), (0.85, 0.6)),
            poly((-0.7, 0.2), (0, -0.6), (0.7, 0.2)),
            poly((-0.5, -0.25), (0, -1.0), (0.5, -0.25)),
        ]
    )


def _key(rng):
    return Shape(
        [
            circle(-0.62, 0, 0.38),
            rect(-0.3, -0.12, 1.0, 0.12),
            rect(0.55, 0.1, 0.72, 0.42),
            rect(0.82, 0.1, 0.98, 0.34),
        ],
        pattern=[(circle(-0.62, 0, 0.13), 1)],
    )


def _fish(rng):
    return Shape(
        [ellipse(-0.2, 0, 0.7, 0.45), poly((0.35, 0), (1, -0.55), (0.85, 0), (1, 0.55))],
        pattern=[(circle(-0.55, -0.1, 0.09), 1)],
    )


def _cloud(rng):
    return Shape(
        [
            circle(-0.55, 0.2, 0.38),
            circle(-0.1, -0.15, 0.5),
            circle(0.45, 0.05, 0.42),
            rect(-0.55, 0.2, 0.5, 0.58),
        ]
    )


def _flower(rng):
    k = int(rng.choice([5, 6]))
    petals = [
        ellipse(0.55 * math.cos(a), 0.55 * math.sin(a), 0.45, 0.28, angle=a)
        for a in np.arange(k) * 2 * math.pi / k
    ]
    return Shape(petals + [circle(0, 0, 0.4)], pattern=[(circle(0, 0, 0.3), 1)])


def _car(rng):
    return Shape(
        [
            rect(-1, -0.1, 1, 0.45),
            poly((-0.55, -0.1), (-0.35, -0.6), (0.35, -0.6), (0.6, -0.1)),
            circle(-0.55, 0.5, 0.28),
            circle(0.55, 0.5, 0.28),
        ],
        pattern=[
            (poly((-0.45, -0.15), (-0.3, -0.5), (-0.05, -0.5), (-0.05, -0.15)), 1),
            (poly((0.05, -0.15), (0.05, -0.5), (0.3, -0.5), (0.48, -0.15)), 1),
        ],
    )


def _umbrella(rng):
    canopy = ellipse(0, 0.05, 1.0, 0.85, a0=math.pi, a1=2 * math.pi, n=30)
    return Shape([canopy, rect(-0.06, 0, 0.06, 0.8), arc_band(-0.2, 0.8, 0.1, 0.24, 0, math.pi)])


def _bottle(rng):
    return Shape(
        [
            rect(-0.42, -0.15, 0.42, 1.0),
            poly((-0.42, -0.15), (-0.16, -0.5), (0.16, -0.5), (0.42, -0.15)),
            rect(-0.16, -0.85, 0.16, -0.45),
            rect(-0.2, -1.0, 0.2, -0.82),
        ],
        pattern=[(rect(-0.42, 0.2, 0.42, 0.6), 1)],
    )


def _moon(rng):
    return Shape([circle(0, 0, 1.0, n=48)], cuts=[circle(_u(rng, 0.4, 0.55), -0.25, 0.85, n=48)])


def _sun(rng):
    k = int(rng.choice([8, 10]))
    rays = []
    for a in np.arange(k) * 2 * math.pi / k:
        c, s, w = math.cos(a), math.sin(a), 0.12
        rays.append(
            poly((0.62 * c - w * s, 0.62 * s + w * c), (c, s), (0.62 * c + w * s, 0.62 * s - w * c))
        )
    return Shape([circle(0, 0, 0.52)] + rays)


def _leaf(rng):
    x = np.linspace(-1, 0.7, 24)
    h = 0.5 * np.sin(math.pi * (x + 1) / 1.7)
    outline = np.concatenate([np.stack([x, -h], 1), np.stack([x[::-1], h[::-1]], 1)])
    return Shape(
        [outline, rect(0.6, -0.05, 1.0, 0.05)],
        pattern=[(poly((-0.8, -0.025), (0.6, -0.025), (0.6, 0.025), (-0.8, 0.025)), 1)],
    )


def _bone(rng):
    return Shape(
        [rect(-0.7, -0.16, 0.7, 0.16)]
        + [circle(sx * 0.72, sy * 0.2, 0.25) for sx in (-1, 1) for sy in (-1, 1)]
    )


def _sailboat(rng):
    return Shape(
        [
            poly((-1, 0.45), (1, 0.45), (0.7, 0.85), (-0.7, 0.85)),
            rect(-0.04, -1, 0.04, 0.46),
            poly((0.04, -0.95), (0.04, 0.35), (0.85, 0.35)),
            poly((-0.04, -0.7), (-0.04, 0.35), (-0.6, 0.35)),
        ]
    )


def _rocket(rng):
    body = ellipse(0, 0.05, 0.3, 0.9)
    return Shape(
        [
            body,
            poly((-0.3, 0.3), (-0.65, 0.95), (-0.2, 0.75)),
            poly((0.3, 0.3), (0.65, 0.95), (0.2, 0.75)),
        ],
        pattern=[(circle(0, -0.25, 0.14), 1)],
    )


def _hammer(rng):
    return Shape(
        [
            rect(-0.1, -0.5, 0.1, 1.0),
            poly((-0.75, -0.9), (0.6, -0.9), (0.75, -0.45), (-0.75, -0.45)),
        ]
    )


def _fork(rng):
    tines = [rect(x - 0.07, -1.0, x + 0.07, -0.2) for x in (-0.38, -0.13, 0.13, 0.38)]
    return Shape(tines + [rect(-0.45, -0.25, 0.45, 0.05), rect(-0.1, 0.0, 0.1, 1.0)])


def _flag(rng):
    n = int(rng.choice([2, 3]))
    h = 0.85 / (2 * n + 1)
    stripes = [
        (rect(-0.82, -0.95 + (2 * i + 1) * h, 0.95, -0.95 + (2 * i + 2) * h), 1) for i in range(n)
    ]
    return Shape([rect(-0.95, -1, -0.8, 1), rect(-0.82, -0.95, 0.95, -0.1)], pattern=stripes)


def _target(rng):
    rings = [(circle(0, 0, r), i % 2) for i, r in enumerate((0.8, 0.6, 0.4, 0.2))]
    rings = [(p, 1 - c) for p, c in rings]
    return Shape([circle(0, 0, 1.0, n=48)], pattern=rings)


def _anchor(rng):
    return Shape(
        [
            circle(0, -0.8, 0.2),
            rect(-0.09, -0.7, 0.09, 0.8),
            rect(-0.5, -0.52, 0.5, -0.38),
            arc_band(0, 0.15, 0.6, 0.78, 0.15, math.pi - 0.15),
            poly((-0.85, 0.0), (-0.55, 0.35), (-0.95, 0.45)),
            poly((0.85, 0.0), (0.55, 0.35), (0.95, 0.45)),
        ]
    )


def _crown(rng):
    return Shape(
        [
            poly(
                (-0.9, 0.6),
                (-0.9, -0.7),
                (-0.45, -0.05),
                (0, -0.8),
                (0.45, -0.05),
                (0.9, -0.7),
                (0.9, 0.6),
            ),
        ],
        pattern=[(circle(x, 0.3, 0.12), 1) for x in (-0.5, 0, 0.5)],
    )


def _lightning(rng):
    return Shape(
        [
            poly(
                (0.15, -1),
                (-0.6, 0.15),
                (-0.05, 0.15),
                (-0.3, 1),
                (0.6, -0.2),
                (0.1, -0.2),
                (0.5, -1),
            )
        ]
    )


def _mushroom(rng):
    cap = ellipse(0, 0.05, 1.0, 0.85, a0=math.pi, a1=2 * math.pi, n=30)
    return Shape(
        [cap, rect(-0.3, 0.0, 0.3, 0.95)],
        pattern=[(circle(x, y, 0.13), 1) for x, y in ((-0.5, -0.3), (0.05, -0.55), (0.5, -0.25))],
    )


def _butterfly(rng):
    return Shape(
        [
            ellipse(-0.5, -0.35, 0.5, 0.38, angle=-0.5),
            ellipse(0.5, -0.35, 0.5, 0.38, angle=0.5),
            ellipse(-0.38, 0.42, 0.36, 0.28, angle=0.4),
            ellipse(0.38, 0.42, 0.36, 0.28, angle=-0.4),
            ellipse(0, 0, 0.12, 0.75),
        ]
    )


def _hourglass(rng):
    return Shape(
        [
            poly((-0.7, -0.9), (0.7, -0.9), (0.1, 0), (0.7, 0.9), (-0.7, 0.9), (-0.1, 0)),
            rect(-0.9, -1, 0.9, -0.82),
            rect(-0.9, 0.82, 0.9, 1),
        ]
    )


def _snowman(rng):
    return Shape(
        [circle(0, 0.45, 0.52), circle(0, -0.3, 0.38), circle(0, -0.78, 0.24)],
        pattern=[(circle(0, y, 0.07), 1) for y in (0.25, 0.5, 0.75, -0.3)],
    )


def _checkerboard(rng):
    n = int(rng.choice([3, 4]))
    step = 2.0 / n
    cells = [
        (rect(-1 + i * step, -1 + j * step, -1 + (i + 1) * step, -1 + (j + 1) * step), 1)
        for i in range(n)
        for j in range(n)
        if (i + j) % 2 == 0
    ]
    return Shape([rect(-1, -1, 1, 1)], pattern=cells)


def _k(name, plural, tier, upright, draw, definition):
    return ObjectKind(name, plural, tier, upright, draw, definition)


# 32 kinds: 14 planned frequent, 10 common, 8 rare (rare = novel: never annotated in training).
OBJECT_KINDS: Tuple[ObjectKind, ...] = (
    _k("star", "stars", "f", False, _star, "a star with five or six points"),
    _k("heart", "hearts", "f", True, _heart, "a heart symbol"),
    _k("arrow", "arrows", "f", False, _arrow, "an arrow with a triangular head"),
    _k("cross", "crosses", "f", False, _cross, "a plus-shaped cross"),
    _k("triangle", "triangles", "f", False, _triangle, "an equilateral triangle"),
    _k("house", "houses", "f", True, _house, "a house with a roof, windows and a door"),
    _k("tree", "trees", "f", True, _tree, "a pine tree with a trunk"),
    _k("key", "keys", "f", False, _key, "a key with a round bow and teeth"),
    _k("fish", "fish", "f", False, _fish, "a fish with a tail and an eye"),
    _k("cloud", "clouds", "f", True, _cloud, "a puffy cloud"),
    _k("flower", "flowers", "f", False, _flower, "a flower with petals around a centre"),
    _k("car", "cars", "f", True, _car, "a car with two wheels and windows"),
    _k("umbrella", "umbrellas", "f", True, _umbrella, "an umbrella with a hooked handle"),
    _k("bottle", "bottles", "f", True, _bottle, "a bottle with a cap and a label"),
    _k("moon", "moons", "c", False, _moon, "a crescent moon"),
    _k("sun", "suns", "c", False, _sun, "a sun with rays"),
    _k("leaf", "leaves", "c", False, _leaf, "a leaf with a stem and a vein"),
    _k("bone", "bones", "c", False, _bone, "a bone with knobbly ends"),
    _k("sailboat", "sailboats", "c", True, _sailboat, "a boat with a mast and two sails"),
    _k("rocket", "rockets", "c", False, _rocket, "a rocket with fins and a window"),
    _k("hammer", "hammers", "c", False, _hammer, "a hammer with a handle and a head"),
    _k("fork", "forks", "c", False, _fork, "a fork with four tines"),
    _k("flag", "flags", "c", True, _flag, "a striped flag on a pole"),
    _k("target", "targets", "c", False, _target, "a round target with rings"),
    _k("anchor", "anchors", "r", True, _anchor, "a ship's anchor"),
    _k("crown", "crowns", "r", True, _crown, "a crown with points and jewels"),
    _k("lightning bolt", "lightning bolts", "r", False, _lightning, "a zigzag lightning bolt"),
    _k("mushroom", "mushrooms", "r", True, _mushroom, "a mushroom with a spotted cap"),
    _k("butterfly", "butterflies", "r", False, _butterfly, "a butterfly with four wings"),
    _k("hourglass", "hourglasses", "r", False, _hourglass, "an hourglass"),
    _k("snowman", "snowmen", "r", True, _snowman, "a snowman of three balls"),
    _k("checkerboard", "checkerboards", "r", False, _checkerboard, "a square checkerboard"),
)


def kind_by_name() -> Dict[str, ObjectKind]:
    return {k.name: k for k in OBJECT_KINDS}
