"""ArcFace-style recognisers through insightface's own classes, and an analyzer built on one.

insightface already knows how such a model is fed: ``face_align.norm_crop`` warps the five keypoints onto
the 112x112 ArcFace template and ``ArcFaceONNX.get_feat`` scales the BGR crop, swaps it to RGB and runs
the session (with the mean/std it infers from the graph, which differs for converted mxnet models). Both
antelopev2's glintr100 and any evaluation recogniser (ArcFace, CurricularFace, ...) go through
:class:`ArcFaceRecognizer`, so there is one way to turn a face into an ArcFace embedding.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from instantid.errors import IncompatibleWeightsError, MissingWeightsError
from instantid.faces.base import Face, FaceAnalyzer


def default_providers() -> list[str]:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def load_insightface_model(path: Path, providers: Sequence[str] | None, expected: type) -> object:
    """``insightface.model_zoo.get_model`` with typed errors: a missing or corrupt file, or a file that
    insightface routes to another kind of model (it returns ``None`` for shapes it does not know)."""
    from insightface.model_zoo import get_model

    if not path.is_file():
        raise MissingWeightsError(f"face model file not found: {path}")
    chosen = list(providers) if providers is not None else default_providers()
    try:
        model = get_model(str(path), providers=chosen)
    except Exception as exc:  # onnxruntime raises its own untyped errors for corrupt files
        raise IncompatibleWeightsError(f"cannot load {path}: {exc}") from None
    if not isinstance(model, expected):
        raise IncompatibleWeightsError(
            f"{path} is not a {expected.__name__} model (insightface routed it to {type(model).__name__})"
        )
    return model


class ArcFaceRecognizer:
    """One ArcFace-style ONNX file: aligned crop (``norm_crop``) -> embedding (``get_feat``), raw, not normed."""

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None) -> None:
        from insightface.model_zoo.arcface_onnx import ArcFaceONNX

        self.path = Path(path)
        self.model = load_insightface_model(self.path, providers, ArcFaceONNX)
        self.input_size: int = int(self.model.input_size[0])
        self.embedding_dim: int = int(self.model.output_shape[-1])

    def crop(self, bgr: np.ndarray, kps: np.ndarray) -> np.ndarray:
        """The face warped onto the ArcFace template: (S, S, 3) uint8 BGR, S = the model's input size."""
        from insightface.utils import face_align

        with warnings.catch_warnings():
            # insightface calls a scikit-image API deprecated in 0.26; the result is unchanged.
            warnings.simplefilter("ignore", FutureWarning)
            return face_align.norm_crop(bgr, landmark=np.asarray(kps, np.float32), image_size=self.input_size)

    def embed(self, bgr: np.ndarray, kps: np.ndarray) -> np.ndarray:
        """(D,) float32 embedding of the face whose five keypoints are ``kps`` in the BGR image ``bgr``."""
        return np.asarray(self.model.get_feat(self.crop(bgr, kps)), dtype=np.float32).reshape(-1)


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    """1 - cosine similarity; ArcFace embeddings are compared by angle."""
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return 1.0 - float(a @ b) / norms if norms > 0 else 1.0


class ArcFaceAnalyzer(FaceAnalyzer):
    """Another analyzer's faces and keypoints, re-embedded by an ArcFace-style ONNX model.

    Used to score generations with a recogniser other than the one that conditioned them (an evaluation
    that embeds with the conditioning model rewards copying its quirks). Detection defaults to dlib,
    which runs offline.
    """

    metric = "cosine distance (1 - cosine similarity)"

    def __init__(
        self, path: str | Path, detector: FaceAnalyzer | None = None,
        same_person_threshold: float | None = None, providers: Sequence[str] | None = None,
    ) -> None:
        if detector is None:
            from instantid.faces.dlib_backend import DlibAnalyzer

            detector = DlibAnalyzer()
        self.detector = detector
        self.recognizer = ArcFaceRecognizer(path, providers)
        self.embedding_dim = self.recognizer.embedding_dim
        self.space = f"arcface:{self.recognizer.path.name}"
        # Unknown for an arbitrary model: without one, evaluation reports no same-person verdicts.
        self.same_person_threshold = same_person_threshold

    def _metric(self, a: np.ndarray, b: np.ndarray) -> float:
        return cosine_distance(a, b)

    def _detect(self, rgb: np.ndarray) -> list[Face]:
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # insightface models take OpenCV's BGR order
        return [replace(face, embedding=self.recognizer.embed(bgr, face.kps), space=self.space)
                for face in self.detector._detect(rgb)]
