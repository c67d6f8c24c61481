"""Drawing scenes: backgrounds, posed objects, occlusion, and exact masks as polygons.

Masks are exact by construction: an object's annotation is the set of pixels it owns in the
final image (no anti-aliasing), and :func:`mask_to_polygons` traces that set along pixel edges,
so that rasterising the polygons (pycocotools, as LVIS/COCO tools do) gives back the same pixels.
"""

import colorsys
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .shapes import ObjectKind

__all__ = [
    "COLOR_NAMES",
    "sample_color",
    "draw_background",
    "rasterize",
    "mask_to_polygons",
    "PlacedObject",
    "compose_scene",
]

_SHIFT = 4  # cv2.fillPoly fractional bits: vertices on a 1/16-pixel grid

# name -> (hue range in degrees, saturation range, value range); hue ranges may wrap (lo > hi).
COLOR_NAMES: Dict[str, Tuple[Tuple[float, float], Tuple[float, float], Tuple[float, float]]] = {
    "red": ((-10, 8), (0.7, 1.0), (0.6, 1.0)),
    "orange": ((20, 35), (0.75, 1.0), (0.85, 1.0)),
    "yellow": ((48, 60), (0.7, 1.0), (0.85, 1.0)),
    "green": ((95, 140), (0.6, 1.0), (0.45, 0.9)),
    "blue": ((205, 235), (0.65, 1.0), (0.55, 1.0)),
    "purple": ((265, 290), (0.5, 0.9), (0.45, 0.85)),
    "pink": ((315, 335), (0.35, 0.6), (0.9, 1.0)),
    "brown": ((18, 32), (0.6, 0.9), (0.3, 0.5)),
    "black": ((0, 360), (0.0, 0.3), (0.03, 0.15)),
    "white": ((0, 360), (0.0, 0.08), (0.93, 1.0)),
    "gray": ((0, 360), (0.0, 0.08), (0.45, 0.65)),
}


def sample_color(rng: np.random.Generator, name: Optional[str] = None) -> Tuple[str, np.ndarray]:
    """A random colour from a named range: (name, RGB uint8 array)."""
    if name is None:
        name = str(rng.choice(list(COLOR_NAMES)))
    (h0, h1), (s0, s1), (v0, v1) = COLOR_NAMES[name]
    h = (rng.uniform(h0, h1) % 360) / 360.0
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(s0, s1), rng.uniform(v0, v1))
    return name, (np.array([r, g, b]) * 255).round().astype(np.uint8)


def draw_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An RGB float32 background: a two-colour gradient or low-frequency colour blotches, at
    random brightness (fine noise is added to the finished image by :func:`compose_scene`)."""
    c0 = rng.uniform(0, 255, 3).astype(np.float32)
    c1 = np.clip(c0 + rng.normal(0, 70, 3), 0, 255).astype(np.float32)
    if rng.random() < 0.5:
        a = rng.uniform(0, 2 * math.pi)
        t = np.arange(w, dtype=np.float32)[None] * math.cos(a) + np.arange(h, dtype=np.float32)[
            :, None
        ] * math.sin(a)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        img = c0 + (c1 - c0) * t[..., None]
    else:
        k = int(rng.integers(2, 6))
        small = (c0 + rng.normal(0, 45, (k, k, 3))).astype(np.float32)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return img  # float32; fine noise is added once, on the finished image


def _pose_matrix(center, size, angle, aspect, flip) -> np.ndarray:
    """2x3 affine map from the unit frame to pixels: ``size`` is the side of the unit square."""
    c, s = math.cos(angle), math.sin(angle)
    sx, sy = size / 2 * aspect * (-1 if flip else 1), size / 2 / aspect
    return np.array([[c * sx, -s * sy, center[0]], [s * sx, c * sy, center[1]]], float)


def rasterize(
    polys: Sequence[np.ndarray], matrix: np.ndarray, shape: Tuple[int, int]
) -> np.ndarray:
    """Fill the union of ``polys`` (unit frame) mapped by ``matrix`` into a bool mask."""
    mask = np.zeros(shape, np.uint8)
    pts = [
        np.round((p @ matrix[:, :2].T + matrix[:, 2]) * (1 << _SHIFT)).astype(np.int32)
        for p in polys
    ]
    for p in pts:  # one call per polygon: fillPoly's even-odd rule would cut overlaps out
        cv2.fillPoly(mask, [p], 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return mask.astype(bool)


def mask_to_polygons(mask: np.ndarray) -> Tuple[List[List[int]], bool]:
    """Trace a bool mask along pixel edges.

    Pixel (row r, column c) covers [c, c+1] x [r, r+1]; polygon vertices are pixel corners, so
    pycocotools' rasterisation (pixel centres inside the polygon) gives the mask back exactly.
    Pixels touching only at a corner end up in different polygons.

    Returns:
        (polygons as flat [x0, y0, x1, y1, ...] integer lists, whether the mask has a hole).
        A hole cannot be represented by COCO polygons (they are unioned): callers avoid them.
    """
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return [], False
    y0, x0 = int(ys.min()), int(xs.min())
    m = np.pad(mask[y0 : ys.max() + 1, x0 : xs.max() + 1], 1)
    inner = m[1:-1, 1:-1]
    # Directed boundary edges, clockwise on screen around each foreground pixel (inside on the
    # right): top (c,r)->(c+1,r), right (c+1,r)->(c+1,r+1), bottom (c+1,r+1)->(c,r+1),
    # left (c,r+1)->(c,r). Coordinates here are in the crop (+1 padding removed below).
    out: Dict[Tuple[int, int], List[Tuple[int, int]]] = {}

    def add(rows, cols, dx0, dy0, dx1, dy1):
        for r, c in zip(rows.tolist(), cols.tolist()):
            out.setdefault((c + dx0, r + dy0), []).append((c + dx1, r + dy1))

    r, c = np.nonzero(inner & ~m[:-2, 1:-1])
    add(r, c, 0, 0, 1, 0)
    r, c = np.nonzero(inner & ~m[1:-1, 2:])
    add(r, c, 1, 0, 1, 1)
    r, c = np.nonzero(inner & ~m[2:, 1:-1])
    add(r, c, 1, 1, 0, 1)
    r, c = np.nonzero(inner & ~m[1:-1, :-2])
    add(r, c, 0, 1, 0, 0)

    polygons, has_hole = [], False
    while out:
        # start where the way on is unambiguous (not a corner shared by diagonal pixels)
        start = next((v for v, n in out.items() if len(n) == 1), next(iter(out)))
        loop, prev, cur = [start], None, start
        while True:
            nexts = out[cur]
            if len(nexts) == 1 or prev is None:
                nxt = nexts.pop()
            else:  # a corner shared by two diagonal pixels: turn right (stay on this pixel)
                dx, dy = cur[0] - prev[0], cur[1] - prev[1]
                want = (cur[0] - dy, cur[1] + dx)
                nxt = want if want in nexts else nexts[0]
                nexts.remove(nxt)
            if not nexts:
                del out[cur]
            prev, cur = cur, nxt
            if cur == start:
                break
            loop.append(cur)
        # drop vertices in the middle of straight runs
        n = len(loop)
        keep = []
        for i in range(n):
            a, b, d = loop[i - 1], loop[i], loop[(i + 1) % n]
            if (b[0] - a[0]) * (d[1] - b[1]) != (b[1] - a[1]) * (d[0] - b[0]):
                keep.append(b)
        area2 = sum(
            keep[i][0] * keep[(i + 1) % len(keep)][1] - keep[(i + 1) % len(keep)][0] * keep[i][1]
            for i in range(len(keep))
        )
        if area2 < 0:  # counter-clockwise on screen: the boundary of a hole
            has_hole = True
            continue
        polygons.append([v for x, y in keep for v in (x + x0, y + y0)])
    return polygons, has_hole


def _has_hole(mask: np.ndarray) -> bool:
    """Fast conservative hole test (8-connected foreground, OpenCV's contour hierarchy)."""
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return False
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.uint8)
    _, hierarchy = cv2.findContours(crop, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    return hierarchy is not None and bool((hierarchy[0][:, 3] >= 0).any())


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Make background pixels that the object encloses part of it.

    The kinds have no holes by design, but rasterising acute notches or near-touching parts at
    small sizes can enclose a few background pixels (4-connected background, 8-connected
    object, as OpenCV's contours see it). They are painted with the object, so the mask stays
    exact. ``mask`` must have a background border (its first row and column).
    """
    outside = mask.astype(np.uint8)
    flood = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), np.uint8)
    cv2.floodFill(outside, flood, (0, 0), 2, flags=4)
    return outside != 2


@dataclass
class PlacedObject:
    """An object in a scene; ``mask`` is what it shows in the final image (after occlusion)."""

    kind: ObjectKind
    category_id: int
    color_name: str
    size: float  # side of the unit square in pixels
    center: Tuple[float, float]
    angle_deg: float
    full_area: int  # pixels of the whole object, before occlusion and cropping by the border
    mask: np.ndarray = None

    @property
    def visible_fraction(self) -> float:
        return float(self.mask.sum()) / max(self.full_area, 1)


def compose_scene(
    rng: np.random.Generator,
    image_size: Tuple[int, int],
    objects: Sequence[Tuple[ObjectKind, int]],
    size_range: Tuple[float, float],
    min_visible: float = 0.6,
    max_tilt_deg: float = 30.0,
    min_area: int = 60,
    tries: int = 25,
    center_margin: float = 0.2,
) -> Tuple[np.ndarray, List[PlacedObject]]:
    """Draw an image with the given objects (drawn in order: later ones occlude earlier ones).

    Each object gets a random colour (contrasting with what lies beneath it), size
    (``size_range`` as fractions of the shorter image side), position, rotation (any angle, or
    within +-``max_tilt_deg`` for upright kinds), aspect and mirror image. A pose is rejected if
    any object would keep less than ``min_visible`` of its pixels or fewer than ``min_area``, or
    if it would enclose part of an earlier object (a mask with a hole, which COCO polygons cannot
    express); an object with no acceptable pose in ``tries`` is left out.

    Returns:
        (RGB uint8 image, the placed objects with their visible masks).
    """
    h, w = image_size
    canvas = draw_background(rng, h, w)
    placed: List[PlacedObject] = []
    for kind, cat_id in objects:
        shape = kind.draw(rng)
        for _ in range(tries):
            size = rng.uniform(*size_range) * min(h, w)
            m = min(center_margin * size, w / 2, h / 2)
            center = (rng.uniform(m, w - m), rng.uniform(m, h - m))
            tilt = max_tilt_deg if kind.upright else 180.0
            angle = rng.uniform(-tilt, tilt)
            aspect = math.exp(rng.uniform(-0.15, 0.15))
            flip = bool(rng.random() < 0.5)
            mat = _pose_matrix(center, size, math.radians(angle), aspect, flip)
            # rasterise in the object's own box (origin ox, oy), then crop to the image
            pts = np.concatenate(shape.parts) @ mat[:, :2].T + mat[:, 2]
            ox, oy = int(math.floor(pts[:, 0].min())) - 1, int(math.floor(pts[:, 1].min())) - 1
            bw = int(math.ceil(pts[:, 0].max())) + 2 - ox
            bh = int(math.ceil(pts[:, 1].max())) + 2 - oy
            local = mat.copy()
            local[:, 2] -= (ox, oy)
            full = rasterize(shape.parts, local, (bh, bw))
            if shape.cuts:
                full &= ~rasterize(shape.cuts, local, (bh, bw))
            full = _fill_holes(full)
            full_area = int(full.sum())
            x0, y0, x1, y1 = max(ox, 0), max(oy, 0), min(ox + bw, w), min(oy + bh, h)
            if full_area == 0 or x0 >= x1 or y0 >= y1:
                continue
            crop = full[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
            area = int(crop.sum())
            if area < max(min_area, min_visible * full_area):
                continue
            ok = True
            for other in placed:
                covered = int((other.mask[y0:y1, x0:x1] & crop).sum())
                if covered:
                    left = other.mask.copy()
                    left[y0:y1, x0:x1] &= ~crop
                    n = int(other.mask.sum()) - covered
                    if n < max(min_area, min_visible * other.full_area) or _has_hole(left):
                        ok = False
                        break
            if not ok:
                continue
            mask = np.zeros((h, w), bool)
            mask[y0:y1, x0:x1] = crop
            # colour: far enough from the mean colour of what the object covers
            under = canvas[mask].mean(0)
            for _ in range(12):
                cname, color = sample_color(rng)
                if np.linalg.norm(color.astype(float) - under) > 110:
                    break
            _, color2 = _second_color(rng, color)
            _paint(canvas, shape, mat, mask, color, color2, rng)
            for other in placed:
                other.mask &= ~mask
            placed.append(
                PlacedObject(
                    kind, cat_id, cname, float(size), center, float(angle), full_area, mask
                )
            )
            break
    sigma = rng.uniform(2, 7)
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * sigma
    return np.clip(canvas, 0, 255).astype(np.uint8), placed


def _second_color(rng, color):
    """A colour contrasting with ``color`` for patterns (windows, stripes, spots)."""
    for _ in range(12):
        name, c2 = sample_color(rng)
        if np.linalg.norm(c2.astype(float) - color.astype(float)) > 150:
            return name, c2
    return "inverse", (255 - color).astype(np.uint8)


def _paint(canvas, shape, mat, mask, color, color2, rng):
    """Paint the object: main colour with a soft shading gradient, an optional darker outline,
    and its pattern in the second colour, only inside ``mask``."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    a = rng.uniform(0, 2 * math.pi)
    amp = rng.uniform(0, 0.25)
    shade = 1 + amp * ((xs * math.cos(a) + ys * math.sin(a)) / max(h, w) - 0.5)
    values = np.asarray(color, np.float32)[None] * shade[:, None].astype(np.float32)
    colors = (np.asarray(color, np.float32), np.asarray(color2, np.float32))
    for poly, ci in shape.pattern:
        pm = rasterize([poly], mat, (h, w))[ys, xs]
        values[pm] = colors[ci]
    if rng.random() < 0.4:
        edge = ~cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)[ys, xs]
        values[edge] = colors[0] * 0.45
    canvas[ys, xs] = np.clip(values, 0, 255)
