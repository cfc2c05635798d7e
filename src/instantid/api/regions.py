"""Where a face is in a picture: region masks for the face tokens, head crops for swap and face detail, and pasting
back.

Every region helper lives here, so one-person, several-people, swap and face-detail share one geometry. Masks are
white inside; crops are taken in the photo's pixels and worked on at a size the model handles (multiples of 8).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from instantid.errors import InvalidInputError
from instantid.faces import Face


def nearest_face_regions(face_centres: Sequence[Sequence[float]], size: tuple[int, int]) -> list[Image.Image]:
    """One region mask per face for ``Person.mask``: every pixel of the (width, height) picture goes to the
    nearest face centre (x, y), so the regions are disjoint and cover the picture. White = inside."""
    centres = np.asarray(face_centres, dtype=np.float64).reshape(-1, 2)
    if len(centres) == 0:
        raise InvalidInputError("nearest_face_regions needs at least one face centre")
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width]
    distance = (xs[None] - centres[:, 0, None, None]) ** 2 + (ys[None] - centres[:, 1, None, None]) ** 2
    owner = distance.argmin(axis=0)
    return [Image.fromarray(np.where(owner == i, 255, 0).astype(np.uint8)).convert("RGB")
            for i in range(len(centres))]


def face_region_mask(face: Face, size: tuple[int, int], scale: tuple[float, float]) -> Image.Image:
    """White rectangle over the (rescaled) face box on black: the demo's 'enhance non-face region' mask."""
    w, h = size
    mask = np.zeros((h, w, 3), dtype=np.uint8)
    x1, y1, x2, y2 = (int(v * s) for v, s in zip(face.bbox, scale * 2, strict=True))
    mask[max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)] = 255
    return Image.fromarray(mask)


def within_box(region: Image.Image, box: np.ndarray) -> Image.Image:
    """``region`` (white inside) cut down to the face box, the single-person "enhance face region" rule."""
    inside = np.zeros((region.height, region.width), dtype=bool)
    (x1, y1), (x2, y2) = (int(v) for v in box[0]), (int(v) for v in box[1])
    inside[max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)] = True
    pixels = np.asarray(region).copy()
    pixels[~inside] = 0
    return Image.fromarray(pixels)


# The head outline relative to a detector's face box (brows to chin): the crown sits about 0.45 box heights
# above the box, the ears about 5 % outside it; measured on the shared photos with the dlib and SCRFD boxes.
CROWN_ABOVE_BOX = 0.45


HEAD_WIDTH = 1.1


@dataclass(frozen=True)
class Region:
    """Where a face is worked on, in photo pixels."""

    face_box: tuple[float, float, float, float]
    ellipse: tuple[float, float, float, float]  # cx, cy, rx, ry: repainted in full
    feather: float  # the soft edge's width outside the ellipse (px)
    crop: tuple[int, int, int, int]  # x1, y1, x2, y2: what the model sees
    work_size: tuple[int, int]  # (w, h) the crop is resized to for the model

    @property
    def crop_size(self) -> tuple[int, int]:
        return self.crop[2] - self.crop[0], self.crop[3] - self.crop[1]

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """Photo pixel coordinates -> working-resolution coordinates of the crop."""
        (cw, ch), (ww, wh) = self.crop_size, self.work_size
        return (np.asarray(points, dtype=np.float64) - self.crop[:2]) * (ww / cw, wh / ch)

    def to_dict(self) -> dict[str, Any]:
        return {
            "face_box": [round(v, 1) for v in self.face_box], "ellipse": [round(v, 1) for v in self.ellipse],
            "feather_px": round(self.feather, 1), "crop_box": list(self.crop), "work_size": list(self.work_size),
        }


MIN_FEATHER_PX = 1e-3


def _work_size(crop_w: int, crop_h: int, resolution: int) -> tuple[int, int]:
    """The crop's long side at ``resolution``, both sides multiples of 8 (the VAE's stride)."""
    scale = resolution / max(crop_w, crop_h)
    return max(8, int(round(crop_w * scale / 8)) * 8), max(8, int(round(crop_h * scale / 8)) * 8)


def head_region(
    face: Face, image_size: tuple[int, int], *, margin: float, feather: float, resolution: int,
    head: bool = True, context: float = 1.25,
) -> Region:
    """The region to repaint around ``face``: an ellipse over the head (``head``) or the face box alone.

    ``margin`` and ``feather`` are fractions of the face size; ``context`` is how much wider than the
    feathered ellipse the crop is, so the model sees the surroundings it must blend into. The crop is square
    where the photo allows; it always holds the whole feathered ellipse (the part inside the photo).
    """
    if margin < 0 or feather < 0 or context < 1 or resolution < 8:
        raise InvalidInputError("margin and feather must be >= 0, context >= 1 and resolution >= 8")
    width, height = image_size
    x1, y1, x2, y2 = face.bbox
    w, h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    size = max(w, h)
    if head:  # chin to crown, ear to ear
        cx, cy = (x1 + x2) / 2, (y1 - CROWN_ABOVE_BOX * h + y2) / 2
        rx, ry = HEAD_WIDTH * w / 2, (1 + CROWN_ABOVE_BOX) * h / 2
    else:
        cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, w / 2, h / 2
    rx, ry, band = rx + margin * size, ry + margin * size, feather * size
    side = 2 * max(rx, ry) + 2 * band
    side = side * context
    crop_w, crop_h = min(math.ceil(side), width), min(math.ceil(side), height)
    left = int(min(max(round(cx - crop_w / 2), 0), width - crop_w))
    top = int(min(max(round(cy - crop_h / 2), 0), height - crop_h))
    crop = (left, top, left + crop_w, top + crop_h)
    return Region(face_box=tuple(float(v) for v in face.bbox), ellipse=(cx, cy, rx, ry), feather=band, crop=crop,
                  work_size=_work_size(crop_w, crop_h, resolution))


def region_mask(region: Region) -> np.ndarray:
    """The blend mask over the crop, (crop_h, crop_w) float32: 1 inside the ellipse, falling linearly to 0 over
    ``feather`` pixels outside it, exactly 0 beyond."""
    import cv2

    cx, cy, rx, ry = region.ellipse
    left, top, right, bottom = region.crop
    xs = np.arange(left, right, dtype=np.float64) + 0.5  # pixel centres
    ys = np.arange(top, bottom, dtype=np.float64)[:, None] + 0.5
    inside = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0
    if region.feather < MIN_FEATHER_PX:  # far below a pixel: a hard edge (and no float32 division by ~0)
        return inside.astype(np.float32)
    # Euclidean distance of every outside pixel to the nearest inside one.
    outside = np.ascontiguousarray((~inside).astype(np.uint8))
    distance = cv2.distanceTransform(outside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return np.clip(1.0 - distance / region.feather, 0.0, 1.0).astype(np.float32)


def crop_for_model(photo: Image.Image, region: Region, mask: np.ndarray) -> tuple[Image.Image, Image.Image]:
    """The crop and its repaint mask (white where the blend mask is above 0) at the working resolution."""
    crop = photo.crop(region.crop).resize(region.work_size, Image.LANCZOS)
    binary = Image.fromarray(((mask > 0) * 255).astype(np.uint8))
    # Resized with a max filter's effect: any covered pixel stays covered, so the blend never reaches past
    # what was repainted.
    work_mask = binary.resize(region.work_size, Image.BILINEAR).point(lambda v: 255 if v > 0 else 0)
    return crop, work_mask


def paste_back(photo: Image.Image, generated: Image.Image, region: Region, mask: np.ndarray) -> Image.Image:
    """``photo`` with ``generated`` (the repainted crop, any size) blended in through ``mask``.

    Where the mask is 0 the photo's pixels are copied, not recomputed, so they are exactly the input's.
    """
    result = photo.convert("RGB").copy()
    original = np.asarray(result.crop(region.crop), dtype=np.float64)
    painted = np.asarray(generated.convert("RGB").resize(region.crop_size, Image.LANCZOS), dtype=np.float64)
    weight = mask[..., None].astype(np.float64)
    blended = np.clip(np.round(original + (painted - original) * weight), 0, 255)
    blended = np.where(weight > 0, blended, original).astype(np.uint8)
    result.paste(Image.fromarray(blended), region.crop[:2])
    return result


def control_pictures(face: Face, region: Region, enhance_face_region: bool) -> tuple[Image.Image, Image.Image | None]:
    """The keypoint picture and (optionally) the face-region mask at the working resolution of ``region``."""
    from instantid.core.keypoints import draw_kps

    ww, wh = region.work_size
    kps_image = draw_kps(Image.new("RGB", (ww, wh)), region.to_crop(face.kps))
    if not enhance_face_region:
        return kps_image, None
    (fx1, fy1), (fx2, fy2) = region.to_crop(np.reshape(face.bbox, (2, 2)))
    face_mask = np.zeros((wh, ww, 3), dtype=np.uint8)
    face_mask[max(int(fy1), 0) : max(int(fy2), 0), max(int(fx1), 0) : max(int(fx2), 0)] = 255
    return kps_image, Image.fromarray(face_mask)


def in_column(face: Face, index: int, count: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """A person's own five keypoints and face box moved into column ``index`` of ``count``, the face half a
    column wide: ``(kps (5, 2), box (2, 2) as [[x1, y1], [x2, y2]])``."""
    x1, y1, x2, y2 = face.bbox
    side = max(x2 - x1, y2 - y1, 1.0)
    target = 0.5 * width / count
    centre = np.array(((x1 + x2) / 2, (y1 + y2) / 2))
    new_centre = np.array(((index + 0.5) * width / count, 0.4 * height))

    def move(points: np.ndarray) -> np.ndarray:
        return (points - centre) * (target / side) + new_centre

    return move(face.kps), move(np.asarray(face.bbox, dtype=np.float64).reshape(2, 2))
