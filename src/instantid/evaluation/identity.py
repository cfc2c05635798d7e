"""The identity recogniser that scores generations: a :class:`~instantid.faces.FaceAnalyzer`, like the one
that conditions them, so both share one convention (a distance; similarity = 1 - distance, derived).

Scoring a generator with the embedding it was conditioned on rewards copying that embedding's quirks, so
the default scorer is dlib's ResNet descriptor (installs from PyPI, runs offline). Any ArcFace-style ONNX
file (ArcFace, CurricularFace, ...) can be plugged in: faces and keypoints come from dlib, alignment and
embedding from insightface's own ``norm_crop`` and ``get_feat`` (:class:`~instantid.faces.arcface.ArcFaceAnalyzer`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from instantid.faces import FaceAnalyzer, create_face_analyzer


def create_recogniser(
    id_model: str | Path | None = None, same_person_threshold: float | None = None,
    detector: FaceAnalyzer | None = None,
) -> FaceAnalyzer:
    """``detector`` (dlib by default) as is, or re-embedded by an ArcFace-style ONNX model ``id_model``.

    ``same_person_threshold`` is a distance (cosine distance for ONNX models); without ``id_model`` the
    detector's calibrated threshold is used.
    """
    detector = detector or create_face_analyzer("dlib")
    if id_model is None:
        return detector
    from instantid.faces.arcface import ArcFaceAnalyzer

    return ArcFaceAnalyzer(id_model, detector=detector, same_person_threshold=same_person_threshold)


def largest_face_embedding(recogniser: FaceAnalyzer, image: Image.Image, name: str | None = None) -> np.ndarray | None:
    """Embedding of the largest face, or ``None`` when no face is found."""
    faces = recogniser.analyze(image, name)
    return faces[0].embedding if faces else None
