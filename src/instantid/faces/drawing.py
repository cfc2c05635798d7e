"""Pictures of detected faces (box, index, five numbered keypoints) for people to check what was found: the
``faces --draw`` command and the web UI's previews."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from instantid.faces.base import Face
from instantid.keypoints import KPS_COLORS


def draw_faces(image: Image.Image, faces: list[Face]) -> Image.Image:
    """The photo with each face's box, its index and its five numbered keypoints."""
    canvas = np.array(image)
    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    for index, face in enumerate(faces):
        x1, y1, x2, y2 = (int(round(v)) for v in face.bbox)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), (0, 255, 0), thickness)
        cv2.putText(canvas, str(index), (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.5 * thickness, (0, 255, 0), thickness)
        radius = max(2, round((x2 - x1) / 40))
        for number, ((x, y), color) in enumerate(zip(face.kps, KPS_COLORS, strict=True)):
            centre = (int(round(x)), int(round(y)))
            cv2.circle(canvas, centre, radius, color, -1)
            cv2.putText(canvas, str(number), (centre[0] + radius, centre[1] - radius),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.35 * thickness, color, max(1, thickness // 2))
    return Image.fromarray(canvas)
