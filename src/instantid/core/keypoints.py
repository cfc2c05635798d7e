"""The keypoint picture IdentityNet sees, and the published demo's resize rule.

IdentityNet was trained on pictures drawn by the published ``draw_kps``; any other drawing (anti-aliased
lines, other widths, other colours) is out of distribution, so :func:`draw_kps` reproduces it pixel for
pixel: limbs as OpenCV polygons from ``ellipse2Poly`` on a float canvas, dimmed to 60 % and truncated,
then the points as filled circles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

# RGB colours of the five points, in detector order: eye, eye, nose, mouth corner, mouth corner.
KPS_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 0),
    (255, 0, 255),
)
# Each limb joins a point to the nose (index 2); it takes the colour of its first point.
KPS_LIMBS: tuple[tuple[int, int], ...] = ((0, 2), (1, 2), (3, 2), (4, 2))
LIMB_HALF_WIDTH = 4
POINT_RADIUS = 10
LIMB_DIM = 0.6


def _as_kps(kps: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    arr = np.asarray(kps, dtype=np.float64)
    if arr.shape != (5, 2):
        raise ValueError(f"keypoints must have shape (5, 2), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("keypoints must be finite numbers")
    return arr


def draw_kps(
    image_pil: Image.Image,
    kps: Sequence[Sequence[float]] | np.ndarray,
    color_list: Sequence[tuple[int, int, int]] = KPS_COLORS,
) -> Image.Image:
    """Draw five face keypoints on a black canvas the size of ``image_pil`` (published layout)."""
    points = _as_kps(kps)
    w, h = image_pil.size
    canvas = np.zeros((h, w, 3), dtype=np.float64)
    for first, nose in KPS_LIMBS:
        (x0, y0), (x1, y1) = points[first], points[nose]
        length = math.hypot(x0 - x1, y0 - y1)
        angle = math.degrees(math.atan2(y0 - y1, x0 - x1))
        centre = (int(np.mean([x0, x1])), int(np.mean([y0, y1])))
        polygon = cv2.ellipse2Poly(centre, (int(length / 2), LIMB_HALF_WIDTH), int(angle), 0, 360, 1)
        canvas = cv2.fillConvexPoly(canvas.copy(), polygon, color_list[first])
    canvas = (canvas * LIMB_DIM).astype(np.uint8)
    for (x, y), color in zip(points, color_list, strict=True):
        canvas = cv2.circle(canvas.copy(), (int(x), int(y)), POINT_RADIUS, color, -1)
    return Image.fromarray(canvas)


def demo_resize_size(
    width: int, height: int, max_side: int = 1280, min_side: int = 1024, multiple: int = 64
) -> tuple[int, int]:
    """Output size of the published demo's ``resize_img``: the short side scaled to ``min_side``, then the
    long side set to ``max_side`` (the whole picture scaled with it, up or down: a square photo gives
    1280x1280), both floored to a multiple of ``multiple``."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    ratio = min_side / min(width, height)
    w, h = round(ratio * width), round(ratio * height)
    ratio = max_side / max(w, h)
    w, h = round(ratio * w), round(ratio * h)
    return max(multiple, (w // multiple) * multiple), max(multiple, (h // multiple) * multiple)
