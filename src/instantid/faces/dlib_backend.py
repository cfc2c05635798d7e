"""Face analysis with dlib's models from the ``face-recognition-models`` package (installs from PyPI).

Detection runs on a copy whose long side is at most :data:`DETECT_MAX_SIDE` (HOG and CNN cost grows with
pixel count; a face smaller than the HOG window at that size is rare in a portrait). Landmarks and the
descriptor are computed on the original pixels with the box scaled back, so the embedding does not depend
on the downscale. When the HOG detector finds nothing, a ladder of retries follows (see
:meth:`DlibAnalyzer._find_boxes`); each step runs only if the previous ones found no face.
"""

from __future__ import annotations

import functools
import importlib.util
import threading
from pathlib import Path
from typing import Any

import cv2
import dlib
import numpy as np

from instantid.errors import InvalidInputError, MissingWeightsError
from instantid.faces.base import SPACE_DLIB, Face, FaceAnalyzer, pad_image

DETECT_MAX_SIDE = 1280
# The CNN detector costs about 4 s per megapixel on 2 cores; 1024 keeps a retry near 3 s.
CNN_MAX_SIDE = 1024
# The CNN's smallest face is about 40 px (20 px after its one upsampling step); on a thinner input it finds
# nothing, and below about 8 px dlib aborts with "Filter windows must be small enough..." or worse.
CNN_MIN_SIDE = 20
# HOG's window is 80 px: one upsampling step finds faces down to about 40 px.
HOG_UPSAMPLE = 1
PAD_FRACTION = 0.25
# Five points from the 68-point layout, in insightface's order: image-left eye (points 36-41), image-right
# eye (42-47), nose tip (30), image-left mouth corner (48), image-right mouth corner (54).
_EYES = (slice(36, 42), slice(42, 48))
_NOSE_TIP, _MOUTH_LEFT, _MOUTH_RIGHT = 30, 48, 54

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
DESCRIPTOR_FILE = "dlib_face_recognition_resnet_model_v1.dat"
CNN_FILE = "mmod_human_face_detector.dat"


def dlib_models_dir() -> Path:
    """Folder of the ``face-recognition-models`` data files.

    The package is located, never imported: its ``__init__`` needs ``pkg_resources``, which current
    setuptools no longer ships.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise MissingWeightsError(
            "the dlib face models are not installed: pip install face-recognition-models"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def _model_file(folder: Path, filename: str) -> str:
    path = folder / filename
    if not path.is_file():
        raise MissingWeightsError(
            f"{filename} not found in {folder}; reinstall it with: pip install --force-reinstall "
            "face-recognition-models"
        )
    return str(path)


@functools.lru_cache(maxsize=8)
def _loaded(kind: str, path: str = "") -> Any:
    """One copy per process of each dlib model (reading the landmark and descriptor files takes ~0.8 s):
    every analyser built on the same files shares it."""
    if kind == "hog":
        return dlib.get_frontal_face_detector()
    return {"cnn": dlib.cnn_face_detection_model_v1, "landmarks": dlib.shape_predictor,
            "descriptor": dlib.face_recognition_model_v1}[kind](path)


# dlib releases the GIL while it computes, but its detectors and networks keep per-call buffers in the model
# object ("concurrent access ... is not safe", dlib's docs): the shared models are used by one thread at a time.
_in_use = threading.Lock()

Box = tuple[float, float, float, float, float]  # x1, y1, x2, y2, score in original pixels


class DlibAnalyzer(FaceAnalyzer):
    """HOG (or CNN) detection, 68 landmarks reduced to five, 128-d ResNet descriptor."""

    space = SPACE_DLIB
    embedding_dim = 128
    metric = "euclidean distance"
    # Classic dlib threshold (Euclidean). On the labelled photos in ../shared/faces the same person is at most
    # 0.51 apart and different people at least 0.74 (measured with this backend), so 0.6 sits in the gap.
    same_person_threshold = 0.6

    def __init__(self, detector: str = "hog", num_jitters: int = 1, models_dir: str | Path | None = None):
        if detector not in ("hog", "cnn"):
            raise InvalidInputError(f"dlib detector must be 'hog' or 'cnn', got {detector!r}")
        if num_jitters < 1:
            raise InvalidInputError(f"num_jitters must be at least 1, got {num_jitters}")
        folder = Path(models_dir) if models_dir is not None else dlib_models_dir()
        self.detector = detector
        self.num_jitters = num_jitters
        self._hog = _loaded("hog")
        self._cnn_path = _model_file(folder, CNN_FILE)
        self._cnn: dlib.cnn_face_detection_model_v1 | None = None  # loaded on first use (about 1 s)
        self._predictor_path = _model_file(folder, PREDICTOR_FILE)
        self._encoder_path = _model_file(folder, DESCRIPTOR_FILE)
        self._predictor = _loaded("landmarks", self._predictor_path)
        self._encoder = _loaded("descriptor", self._encoder_path)

    def _memo_key(self) -> tuple:
        return ("dlib", self.detector, self.num_jitters, self._cnn_path, self._predictor_path, self._encoder_path)

    def _metric(self, a: np.ndarray, b: np.ndarray) -> float:
        # dlib's vectors are not centred, so cosine would compress distances: it was trained on Euclidean.
        return float(np.linalg.norm(a - b))

    def _detect(self, rgb: np.ndarray) -> list[Face]:
        with _in_use:
            return [self._describe(rgb, box) for box in self._find_boxes(rgb)]

    def _find_boxes(self, rgb: np.ndarray) -> list[Box]:
        """Retry ladder: HOG; HOG on a bordered copy (tight crops); CNN (small, tilted, profile faces)."""
        if self.detector == "cnn":
            return self._run_cnn(rgb)
        boxes = self._run_hog(rgb)
        if not boxes:
            padded, dx, dy = pad_image(rgb, PAD_FRACTION)
            boxes = [(x1 - dx, y1 - dy, x2 - dx, y2 - dy, s) for x1, y1, x2, y2, s in self._run_hog(padded)]
        return boxes or self._run_cnn(rgb)

    def _run_hog(self, rgb: np.ndarray) -> list[Box]:
        small, scale = _downscale(rgb, DETECT_MAX_SIDE)
        rects, scores, _ = self._hog.run(small, HOG_UPSAMPLE, 0.0)
        return [_scaled(rect, score, scale) for rect, score in zip(rects, scores, strict=True)]

    def _run_cnn(self, rgb: np.ndarray) -> list[Box]:
        small, scale = _downscale(rgb, CNN_MAX_SIDE)
        if min(small.shape[:2]) < CNN_MIN_SIDE:  # e.g. a 20x3000 strip, downscaled to 7 px across
            return []
        if self._cnn is None:
            self._cnn = _loaded("cnn", self._cnn_path)
        # Small photos are upsampled once so faces reach the CNN's ~40 px minimum.
        upsample = 1 if max(small.shape[:2]) < CNN_MAX_SIDE // 2 else 0
        return [_scaled(d.rect, d.confidence, scale) for d in self._cnn(small, upsample)]

    def _describe(self, rgb: np.ndarray, box: Box) -> Face:
        x1, y1, x2, y2, score = box
        rect = dlib.rectangle(int(round(x1)), int(round(y1)), int(round(x2)), int(round(y2)))
        shape = self._predictor(rgb, rect)
        points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
        kps = np.stack(
            [points[_EYES[0]].mean(0), points[_EYES[1]].mean(0), points[_NOSE_TIP], points[_MOUTH_LEFT],
             points[_MOUTH_RIGHT]]
        ).astype(np.float32)
        descriptor = self._encoder.compute_face_descriptor(rgb, shape, self.num_jitters)
        h, w = rgb.shape[:2]
        bbox = (max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2))
        return Face(bbox=bbox, score=float(score), kps=kps,
                    embedding=np.asarray(descriptor, dtype=np.float32), space=self.space)


def _downscale(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """A copy whose long side is at most ``max_side``, and the factor that maps its pixels back."""
    h, w = rgb.shape[:2]
    factor = max(h, w) / max_side
    if factor <= 1.0:
        return rgb, 1.0
    size = (max(1, round(w / factor)), max(1, round(h / factor)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), factor


def _scaled(rect: dlib.rectangle, score: float, scale: float) -> Box:
    # dlib's right/bottom are inclusive pixel indices; +1 gives the x2/y2 edge convention.
    return (rect.left() * scale, rect.top() * scale, (rect.right() + 1) * scale, (rect.bottom() + 1) * scale,
            float(score))
