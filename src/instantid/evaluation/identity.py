"""Identity recognisers for evaluation, kept apart from the face model that conditions generation.

Scoring a generator with the embedding it was conditioned on rewards copying that embedding's quirks, so
the default scorer is dlib's ResNet descriptor (installs from PyPI, runs offline), and any ArcFace-style
ONNX file (ArcFace, CurricularFace, ...) can be plugged in with :class:`OnnxRecogniser`: faces are found
and given five keypoints by dlib, aligned to the standard 112x112 ArcFace template, then embedded.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from instantid.errors import IncompatibleWeightsError, MissingWeightsError
from instantid.faces import Face, FaceAnalyzer, create_face_analyzer

# insightface's arcface_dst: where the five keypoints (eye, eye, nose, mouth, mouth) sit in a 112x112 crop.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
CROP_SIZE = 112


def align_face(rgb: np.ndarray, kps: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """The face warped onto the ArcFace template by a similarity transform: (size, size, 3) uint8."""
    template = ARCFACE_TEMPLATE * (size / CROP_SIZE)
    matrix, _ = cv2.estimateAffinePartial2D(np.asarray(kps, np.float32), template, method=cv2.LMEDS)
    if matrix is None:  # degenerate keypoints (all on one spot): fall back to a plain resize
        return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
    return cv2.warpAffine(rgb, matrix, (size, size), borderValue=0.0)


class IdentityRecogniser(ABC):
    """Largest-face embedding of an image, and how alike two embeddings are (higher = more alike)."""

    name: str
    metric: str  # how similarity is defined, shown in reports
    same_person_similarity: float | None  # similarity at or above which two faces count as one person

    def __init__(self, detector: FaceAnalyzer | None = None) -> None:
        self.detector = detector or create_face_analyzer("dlib")

    def embed(self, image: Image.Image, name: str | None = None) -> np.ndarray | None:
        """Embedding of the largest face, or ``None`` when no face is found."""
        faces = self.detector.analyze(image, name)
        return self._embed(np.asarray(image.convert("RGB")), faces[0]) if faces else None

    @abstractmethod
    def _embed(self, rgb: np.ndarray, face: Face) -> np.ndarray: ...

    @abstractmethod
    def similarity(self, a: np.ndarray, b: np.ndarray) -> float: ...

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """Dissimilarity used for diversity: 1 - similarity."""
        return 1.0 - self.similarity(a, b)


class DlibRecogniser(IdentityRecogniser):
    """dlib's 128-d descriptor; similarity = 1 - Euclidean distance (its vectors are not centred)."""

    name = "dlib-resnet-128"
    metric = "1 - euclidean distance of dlib descriptors"

    def __init__(self, detector: FaceAnalyzer | None = None) -> None:
        super().__init__(detector)
        self.same_person_similarity = 1.0 - self.detector.same_person_threshold

    def _embed(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        return np.asarray(face.embedding, dtype=np.float32)  # the detector's own descriptor

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        return 1.0 - float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))


class OnnxRecogniser(IdentityRecogniser):
    """An ArcFace-style ONNX model on 112x112 aligned crops; cosine similarity.

    Input is RGB scaled to [-1, 1] ((x - 127.5) / 127.5, as insightface feeds its recognisers), laid out
    NCHW or NHWC as the model's input shape says.
    """

    metric = "cosine similarity"

    def __init__(
        self, path: str | Path, same_person_similarity: float | None = None, detector: FaceAnalyzer | None = None,
    ) -> None:
        import onnxruntime

        path = Path(path)
        if not path.is_file():
            raise MissingWeightsError(f"identity model not found: {path} (give an ArcFace-style .onnx file)")
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise IncompatibleWeightsError(f"cannot load identity model {path}: {exc}") from exc
        model_input = self.session.get_inputs()[0]
        shape = list(model_input.shape)
        if len(shape) != 4 or 3 not in (shape[1], shape[3]):
            raise IncompatibleWeightsError(
                f"identity model {path} takes input of shape {shape}; expected (N, 3, 112, 112) or (N, 112, 112, 3)"
            )
        self.channels_first = shape[1] == 3
        self.input_name = model_input.name
        self.name = f"onnx:{path.name}"
        self.same_person_similarity = same_person_similarity
        super().__init__(detector)

    def _embed(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        crop = (align_face(rgb, face.kps).astype(np.float32) - 127.5) / 127.5
        batch = crop.transpose(2, 0, 1)[None] if self.channels_first else crop[None]
        return np.asarray(self.session.run(None, {self.input_name: batch})[0], dtype=np.float32).reshape(-1)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def create_recogniser(
    id_model: str | Path | None = None, same_person_similarity: float | None = None
) -> IdentityRecogniser:
    """dlib by default; an ONNX ArcFace-style model when ``id_model`` is given."""
    if id_model is None:
        return DlibRecogniser()
    return OnnxRecogniser(id_model, same_person_similarity)
