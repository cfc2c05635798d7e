"""Face analysis with dlib's models from the ``face-recognition-models`` package (installs from PyPI).

Detection runs on a copy whose long side is at most :data:`DETECT_MAX_SIDE` (HOG and CNN cost grows with
pixel count; a face smaller than the HOG window at that size is rare in a portrait). Landmarks and the
descriptor are computed on the original pixels with the box scaled back, so the embedding does not depend
on the downscale. When the HOG detector finds nothing, a ladder of retries follows (see
:meth:`DlibAnalyzer._find_boxes`); each step runs only if the previous ones found no face.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


@dataclass
class _Models:
    """One set of dlib models for one folder's files (reading the landmark and descriptor files takes ~0.8 s)."""

    hog: Any
    predictor: Any
    encoder: Any
    cnn_path: str
    cnn: Any = None  # loaded on first use (about 1 s)

    def cnn_model(self) -> Any:
        if self.cnn is None:
            self.cnn = dlib.cnn_face_detection_model_v1(self.cnn_path)
        return self.cnn


# dlib releases the GIL while it computes, but its detectors and networks keep per-call buffers in the model
# object ("concurrent access ... is not safe", dlib's docs). So a call borrows a set of models from this pool:
# calls one after another reuse one set, whatever analyser they come from; calls running at the same time (server
# threads, `prepare --workers`) each get their own, loaded once and kept for the next.
_spare: dict[tuple[str, str, str], list[_Models]] = {}
_spare_lock = threading.Lock()


@contextmanager
def _borrowed(files: tuple[str, str, str]) -> Iterator[_Models]:
    """A set of models for ``files`` (CNN, landmarks, descriptor paths) that no other thread uses meanwhile."""
    with _spare_lock:
        spare = _spare.get(files)
        models = spare.pop() if spare else None
    if models is None:
        cnn, landmarks, descriptor = files
        models = _Models(dlib.get_frontal_face_detector(), dlib.shape_predictor(landmarks),
                         dlib.face_recognition_model_v1(descriptor), cnn)
    try:
        yield models
    finally:
        with _spare_lock:
            _spare.setdefault(files, []).append(models)


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
        self._files = (_model_file(folder, CNN_FILE), _model_file(folder, PREDICTOR_FILE),
                       _model_file(folder, DESCRIPTOR_FILE))
        with _borrowed(self._files):  # loaded now (a broken file fails here), unless a set is already spare
            pass

    def _memo_key(self) -> tuple:
        return ("dlib", self.detector, self.num_jitters, *self._files)

    def _metric(self, a: np.ndarray, b: np.ndarray) -> float:
        # dlib's vectors are not centred, so cosine would compress distances: it was trained on Euclidean.
        return float(np.linalg.norm(a - b))

    def _detect(self, rgb: np.ndarray) -> list[Face]:
        with _borrowed(self._files) as models:
            return [self._describe(models, rgb, box) for box in self._find_boxes(models, rgb)]

    def _find_boxes(self, models: _Models, rgb: np.ndarray) -> list[Box]:
        """Retry ladder: HOG; HOG on a bordered copy (tight crops); CNN (small, tilted, profile faces)."""
        if self.detector == "cnn":
            return self._run_cnn(models, rgb)
        boxes = self._run_hog(models, rgb)
        if not boxes:
            padded, dx, dy = pad_image(rgb, PAD_FRACTION)
            boxes = [(x1 - dx, y1 - dy, x2 - dx, y2 - dy, s) for x1, y1, x2, y2, s in self._run_hog(models, padded)]
        return boxes or self._run_cnn(models, rgb)

    def _run_hog(self, models: _Models, rgb: np.ndarray) -> list[Box]:
        small, scale = _downscale(rgb, DETECT_MAX_SIDE)
        rects, scores, _ = models.hog.run(small, HOG_UPSAMPLE, 0.0)
        return [_scaled(rect, score, scale) for rect, score in zip(rects, scores, strict=True)]

    def _run_cnn(self, models: _Models, rgb: np.ndarray) -> list[Box]:
        small, scale = _downscale(rgb, CNN_MAX_SIDE)
        if min(small.shape[:2]) < CNN_MIN_SIDE:  # e.g. a 20x3000 strip, downscaled to 7 px across
            return []
        # Small photos are upsampled once so faces reach the CNN's ~40 px minimum.
        upsample = 1 if max(small.shape[:2]) < CNN_MAX_SIDE // 2 else 0
        return [_scaled(d.rect, d.confidence, scale) for d in models.cnn_model()(small, upsample)]

    def _describe(self, models: _Models, rgb: np.ndarray, box: Box) -> Face:
        x1, y1, x2, y2, score = box
        rect = dlib.rectangle(int(round(x1)), int(round(y1)), int(round(x2)), int(round(y2)))
        shape = models.predictor(rgb, rect)
        points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
        kps = np.stack(
            [points[_EYES[0]].mean(0), points[_EYES[1]].mean(0), points[_NOSE_TIP], points[_MOUTH_LEFT],
             points[_MOUTH_RIGHT]]
        ).astype(np.float32)
        descriptor = models.encoder.compute_face_descriptor(rgb, shape, self.num_jitters)
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
