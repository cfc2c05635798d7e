"""The control maps of the published demo's extra ControlNets, made from the pose photo (else the face photo).

* ``canny``: OpenCV's Canny edges with the demo's thresholds (100, 200); no weights.
* ``depth``: a transformers depth estimator (Depth-Anything, which the demo uses, or DPT: any
  ``AutoModelForDepthEstimation``), min-max scaled to 0..255 at the photo's size as the demo does.
* ``pose``: a transformers ViTPose body-keypoint model on the whole photo, drawn as an OpenPose body skeleton
  (18 points, OpenPose's limb colours), the picture an OpenPose ControlNet was trained on. The demo runs
  controlnet_aux's OpenposeDetector, which needs torchvision and opencv-python-headless (neither installs beside
  this project's torch and insightface); ViTPose is the maintained pose model transformers ships.

The model-backed mappers load with ``from_pretrained`` from a folder (see :mod:`instantid.io.models` for the
published ones) and are called with a PIL picture; every map is an RGB picture of the photo's size.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from instantid.errors import IncompatibleWeightsError

CANNY_THRESHOLDS = (100, 200)  # the published demo's get_canny_image
COCO_KEYPOINTS = 17
POSE_MIN_SCORE = 0.3  # a keypoint below this confidence is not drawn (OpenPose's own body threshold is 0.1-0.4)

# COCO's 17 keypoints (ViTPose's output) -> OpenPose's 18: for each OpenPose point its COCO index; -1 = the neck,
# which COCO lacks: the middle of the shoulders (5, 6), as DWPose draws it.
_OPENPOSE_FROM_COCO = (0, -1, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
# OpenPose's body limbs (1-based point pairs) and colours, as controlnet_aux's draw_bodypose (Apache-2.0) draws them.
_LIMBS = ((2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13), (13, 14),
          (2, 1), (1, 15), (15, 17), (1, 16), (16, 18))
_COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
            (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
            (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))


def canny_map(photo: Image.Image, thresholds: tuple[int, int] = CANNY_THRESHOLDS) -> Image.Image:
    """Canny edges of ``photo`` (white on black), as the published demo computes them."""
    import cv2

    edges = cv2.Canny(np.asarray(photo.convert("RGB"))[:, :, ::-1].copy(), *thresholds)
    return Image.fromarray(edges, "L").convert("RGB")


def draw_openpose(size: tuple[int, int], points: np.ndarray, scores: np.ndarray,
                  min_score: float = POSE_MIN_SCORE) -> Image.Image:
    """An OpenPose body picture of ``size`` (width, height) from COCO keypoints ``points`` (17, 2) in pixels."""
    import cv2

    width, height = size
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    body: list[np.ndarray | None] = []
    for coco in _OPENPOSE_FROM_COCO:
        pair = (5, 6) if coco < 0 else (coco,)
        ok = all(scores[i] >= min_score for i in pair)
        body.append(points[list(pair)].mean(axis=0) if ok else None)
    stick = max(1, round(4 * max(width, height) / 512))  # OpenPose draws 4 px limbs on its 512 px pictures
    for (a, b), colour in zip(_LIMBS, _COLOURS, strict=False):
        one, two = body[a - 1], body[b - 1]
        if one is None or two is None:
            continue
        middle = (one + two) / 2
        length = float(np.hypot(*(one - two)))
        angle = math.degrees(math.atan2(one[1] - two[1], one[0] - two[0]))
        polygon = cv2.ellipse2Poly((int(middle[0]), int(middle[1])), (int(length / 2), stick), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, [int(c * 0.6) for c in colour])
    for point, colour in zip(body, _COLOURS, strict=True):
        if point is not None:
            cv2.circle(canvas, (int(point[0]), int(point[1])), stick, colour, thickness=-1)
    return Image.fromarray(canvas)


class PoseMapper:
    """ViTPose body keypoints of the whole photo, drawn as OpenPose's skeleton."""

    def __init__(self, model: Any, processor: Any) -> None:
        self.model = model.eval()
        self.processor = processor

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> PoseMapper:
        from transformers import AutoImageProcessor, VitPoseForPoseEstimation

        return cls(VitPoseForPoseEstimation.from_pretrained(folder), AutoImageProcessor.from_pretrained(folder))

    @torch.no_grad()
    def __call__(self, photo: Image.Image) -> Image.Image:
        photo = photo.convert("RGB")
        boxes = [[[0.0, 0.0, float(photo.width), float(photo.height)]]]  # COCO (x, y, w, h): the whole photo
        inputs = self.processor(photo, boxes=boxes, return_tensors="pt")
        outputs = self.model(pixel_values=inputs["pixel_values"].to(self.model.device, self.model.dtype))
        person = self.processor.post_process_pose_estimation(outputs, boxes=boxes)[0][0]
        if len(person["scores"]) != COCO_KEYPOINTS:
            raise IncompatibleWeightsError(f"the pose map model gives {len(person['scores'])} keypoints, not COCO's "
                                           f"{COCO_KEYPOINTS}: use a ViTPose body model (e.g. the default)")
        return draw_openpose(photo.size, person["keypoints"].float().cpu().numpy(),
                             person["scores"].float().cpu().numpy())


class DepthMapper:
    """Relative depth of the photo (near = bright), min-max scaled to 0..255 as the published demo does."""

    def __init__(self, model: Any, processor: Any) -> None:
        self.model = model.eval()
        self.processor = processor

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> DepthMapper:
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        return cls(AutoModelForDepthEstimation.from_pretrained(folder), AutoImageProcessor.from_pretrained(folder))

    @torch.no_grad()
    def __call__(self, photo: Image.Image) -> Image.Image:
        photo = photo.convert("RGB")
        inputs = self.processor(photo, return_tensors="pt")
        outputs = self.model(pixel_values=inputs["pixel_values"].to(self.model.device, self.model.dtype))
        depth = self.processor.post_process_depth_estimation(outputs, target_sizes=[(photo.height, photo.width)])
        values = depth[0]["predicted_depth"].float().cpu().numpy()
        span = float(values.max() - values.min())
        scaled = (values - values.min()) / span * 255.0 if span > 0 else np.zeros_like(values)
        return Image.fromarray(scaled.astype(np.uint8), "L").convert("RGB")


def mapper(kind: str, folder: str | Path | None) -> Any:
    """The map maker of one kind: ``canny`` needs no folder; ``pose`` / ``depth`` load theirs."""
    if kind == "canny":
        return canny_map
    if folder is None:
        raise ValueError(f"the {kind} map needs its model folder")
    return {"pose": PoseMapper, "depth": DepthMapper}[kind].from_pretrained(folder)
