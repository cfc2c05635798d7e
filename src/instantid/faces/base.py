"""What every face-analysis backend returns and promises: :class:`Face` and :class:`FaceAnalyzer`."""

from __future__ import annotations

import hashlib
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from instantid.errors import EmbeddingSpaceError, FaceIndexError, ImageReadError, InvalidInputError, NoFaceError
from instantid.faces.images import ImageSource, describe_source, load_image

# An embedding is only meaningful next to embeddings of the same model: the name travels with it.
SPACE_ANTELOPEV2 = "antelopev2-512"
SPACE_DLIB = "dlib-128"
EMBEDDING_DIMS: dict[str, int] = {SPACE_ANTELOPEV2: 512, SPACE_DLIB: 128}
# No backend finds a face shorter than about 20 px (dlib's CNN with one upsampling step, the smallest of
# them), so a thinner image cannot show one; refusing it up front also keeps such images away from dlib's
# CNN, which aborts (or corrupts memory) when its filters do not fit the image.
MIN_IMAGE_SIDE = 20
# Photos whose analysis is remembered, process-wide (see FaceAnalyzer._memo_key). A photo is often analysed
# again in one process: the web UI's preview and then its Generate click, a pose photo that is also the face
# photo, a reference photo on every row of a batch file, the same upload sent to the server twice.
MEMO_PHOTOS = 32
_memo: OrderedDict[tuple, list[Face]] = OrderedDict()
_memo_lock = threading.Lock()


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face in image pixel coordinates.

    ``kps`` holds five points in insightface's order: eye, eye (the one with the smaller x in an upright
    face first), nose tip, mouth corner, mouth corner (again image-left first).
    """

    bbox: tuple[float, float, float, float]  # x1, y1, x2, y2
    score: float  # detector-specific confidence; compare only within one backend
    kps: np.ndarray  # (5, 2) float32
    embedding: np.ndarray = field(repr=False)  # (D,) float32, D = EMBEDDING_DIMS[space]
    space: str

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.bbox
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (lists and floats); :meth:`from_dict` reads them back exactly (float32 values
        survive JSON as Python floats)."""
        return {
            "bbox": [float(v) for v in self.bbox],
            "score": float(self.score),
            "kps": [[float(x), float(y)] for x, y in self.kps],
            "embedding": [float(v) for v in self.embedding],
            "space": self.space,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Face:
        """The face :meth:`to_dict` wrote."""
        x1, y1, x2, y2 = (float(v) for v in data["bbox"])
        return cls(bbox=(x1, y1, x2, y2), score=float(data["score"]), kps=np.asarray(data["kps"], dtype=np.float32),
                   embedding=np.asarray(data["embedding"], dtype=np.float32), space=data["space"])


def pad_image(rgb: np.ndarray, fraction: float) -> tuple[np.ndarray, int, int]:
    """Border the image by ``fraction`` of each side (edge colours replicated) and return the offset.

    Detectors need some context around a face; a tight crop whose face touches the frame is found once
    the frame is widened. Replicating edges avoids a hard line a detector could take for a contour.
    """
    h, w = rgb.shape[:2]
    dy, dx = int(round(h * fraction)), int(round(w * fraction))
    padded = np.pad(rgb, ((dy, dy), (dx, dx), (0, 0)), mode="edge")
    return padded, dx, dy


def choose_face(faces: list[Face], label: str, index: int | None = None) -> Face:
    """The largest of ``faces`` (largest first, as :meth:`FaceAnalyzer.analyze` gives them), or the ``index``-th;
    :class:`NoFaceError` when there is none."""
    if not faces:
        raise NoFaceError(label)
    if index is None:
        return faces[0]
    if not 0 <= index < len(faces):
        raise FaceIndexError(
            f"face index {index} is out of range: {len(faces)} face(s) found in {label} "
            f"(valid indices 0..{len(faces) - 1}, largest first)"
        )
    return faces[index]


def several_faces(label: str, found: int, index: int | None, what: str = "used face 0 (the largest); faces are "
                  "numbered from 0, largest first: choose another with the face index") -> str | None:
    """The line every surface shows (CLI warning, web UI, metadata ``warnings``) when a photo holds several faces
    and no face ``index`` was chosen: how many there were and ``what`` was taken; else None."""
    if found < 2 or index is not None:
        return None
    return f"{label}: {found} faces found, {what}"


class FaceAnalyzer(ABC):
    """Detect faces, place five keypoints and compute an identity embedding for each.

    Subclasses implement :meth:`_detect` on an RGB array and the identity metric. The convention is a
    distance (smaller is more alike) everywhere: thresholds, diversity and ``compare`` use it; the
    similarity that evaluation reports is derived from it (:meth:`similarity`).
    """

    space: str
    embedding_dim: int
    metric: str  # what :meth:`distance` computes, in words (shown in reports)
    # Distance at or below which two embeddings are the same person; None where it is not calibrated.
    same_person_threshold: float | None

    @abstractmethod
    def _detect(self, rgb: np.ndarray) -> list[Face]:
        """All faces in an (H, W, 3) uint8 RGB array, in any order."""

    @abstractmethod
    def _metric(self, a: np.ndarray, b: np.ndarray) -> float:
        """Identity distance between two checked embeddings of this space."""

    def _memo_key(self) -> tuple | None:
        """Everything besides the pixels that decides what :meth:`_detect` finds (model files, detector
        settings), or None to analyse every call afresh. Two analysers with the same key share remembered
        photos, so the key must name the weights, not the instance."""
        return None

    def _detect_remembered(self, rgb: np.ndarray) -> list[Face]:
        key = self._memo_key()
        if key is None:
            return self._detect(rgb)
        photo = (key, rgb.shape, hashlib.blake2b(np.ascontiguousarray(rgb).data, digest_size=16).digest())
        with _memo_lock:
            faces = _memo.get(photo)
            if faces is not None:
                _memo.move_to_end(photo)
        if faces is None:
            faces = self._detect(rgb)
            with _memo_lock:
                _memo[photo] = faces
                while len(_memo) > MEMO_PHOTOS:
                    _memo.popitem(last=False)
        # Copies: a caller that scales keypoints in place must not change what the next caller gets.
        return [replace(f, kps=f.kps.copy(), embedding=f.embedding.copy()) for f in faces]

    def analyze(self, image: ImageSource, name: str | None = None) -> list[Face]:
        """All faces, largest box first; ``[]`` when there is none.

        Raises :class:`ImageReadError` for an unreadable image or one under :data:`MIN_IMAGE_SIDE` pixels.
        """
        label = describe_source(image, name)
        rgb = np.asarray(load_image(image, label))
        height, width = rgb.shape[:2]
        if min(height, width) < MIN_IMAGE_SIDE:
            raise ImageReadError(
                label, f"the image is too small ({width}x{height}); a face needs at least {MIN_IMAGE_SIDE} "
                f"pixels on each side"
            )
        return sorted(self._detect_remembered(rgb), key=lambda face: face.area, reverse=True)

    def get_face(self, image: ImageSource, name: str | None = None, index: int | None = None) -> Face:
        """The largest face (as the published pipeline uses), or the ``index``-th by size."""
        label = describe_source(image, name)
        return choose_face(self.analyze(image, label), label, index)

    def _check(self, embedding: np.ndarray) -> np.ndarray:
        vector = np.asarray(embedding, dtype=np.float64).reshape(-1)
        if vector.shape != (self.embedding_dim,):
            raise EmbeddingSpaceError(
                f"an embedding with {vector.size} values cannot be compared in the {self.space} space "
                f"({self.embedding_dim} values); analyse both photos with the same backend"
            )
        return vector

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """Identity distance: smaller is more alike."""
        return self._metric(self._check(a), self._check(b))

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        """Derived: ``1 - distance`` (cosine similarity for ArcFace-style models); larger is more alike."""
        return 1.0 - self.distance(a, b)

    def is_same(self, a: np.ndarray, b: np.ndarray) -> bool:
        """Whether two embeddings belong to the same person at the calibrated threshold."""
        if self.same_person_threshold is None:
            raise InvalidInputError(f"{self.space} has no calibrated same-person threshold: give one")
        return self.distance(a, b) <= self.same_person_threshold
