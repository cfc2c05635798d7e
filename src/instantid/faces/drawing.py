"""Pictures of detected faces (box, face number, five keypoints) for people to check what was found: the
``faces --draw`` command and the web UI's previews."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

from instantid.core.keypoints import KPS_COLORS
from instantid.faces.base import Face


def draw_faces(image: Image.Image, faces: list[Face], numbers: Sequence[int | None] | None = None,
               keypoint_numbers: bool = True) -> Image.Image:
    """The photo with each face's box, its number (``numbers``: default the faces' positions; None: no number)
    and its five keypoints, numbered with ``keypoint_numbers``. The web UI leaves the keypoint numbers out: next
    to a face's number they read as other face numbers."""
    canvas = np.array(image)
    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    labels = list(range(len(faces))) if numbers is None else list(numbers)
    for face, label in zip(faces, labels, strict=True):
        x1, y1, x2, y2 = (int(round(v)) for v in face.bbox)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), (0, 255, 0), thickness)
        if label is not None:
            _label(canvas, str(label), (x1, y2), thickness)
        radius = max(2, round((x2 - x1) / 40))
        for number, ((x, y), color) in enumerate(zip(face.kps, KPS_COLORS, strict=True)):
            centre = (int(round(x)), int(round(y)))
            cv2.circle(canvas, centre, radius, color, -1)
            if keypoint_numbers:
                cv2.putText(canvas, str(number), (centre[0] + radius, centre[1] - radius),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.35 * thickness, color, max(1, thickness // 2))
    return Image.fromarray(canvas)


def _label(canvas: np.ndarray, text: str, corner: tuple[int, int], thickness: int) -> None:
    """A face number in black on a green tab under the box's bottom-left corner, kept inside the picture (under
    the box, the web UI's label and buttons over the picture's top corners do not hide it)."""
    scale = 0.6 * thickness
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    tab_w, tab_h = w + 2 * thickness, h + base + 2 * thickness
    x = min(max(corner[0], 0), max(canvas.shape[1] - tab_w, 0))
    y = min(max(corner[1], 0), max(canvas.shape[0] - tab_h, 0))
    cv2.rectangle(canvas, (x, y), (x + tab_w, y + tab_h), (0, 255, 0), -1)
    cv2.putText(canvas, text, (x + thickness, y + thickness + h), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0),
                thickness)
