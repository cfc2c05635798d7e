"""Face analysis: find faces, their five keypoints and an identity embedding (paper section 3.2).

Two backends share one interface (:class:`FaceAnalyzer`): ``antelopev2`` (insightface ONNX files, what
InstantID's adapter was trained on) and ``dlib`` (installs from PyPI; for keypoints, checks and tests,
its 128-d embeddings cannot drive the published adapter). :class:`~instantid.faces.arcface.ArcFaceAnalyzer`
re-embeds another backend's faces with any ArcFace-style ONNX model (used to score generations). Every
analyzer compares embeddings by a distance (smaller = more alike). Backends are imported only when created,
so importing this package stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from instantid.errors import InvalidInputError
from instantid.faces.base import (
    EMBEDDING_DIMS,
    MIN_IMAGE_SIDE,
    SPACE_ANTELOPEV2,
    SPACE_DLIB,
    Face,
    FaceAnalyzer,
    choose_face,
    several_faces,
)
from instantid.faces.images import IMAGE_SUFFIXES, MAX_PIXELS, load_image

BACKENDS = ("auto", "dlib", "antelopev2")
# The demo's tiny weights take dlib's 128-d embeddings (it runs offline, from PyPI): its face model on every surface.
DEMO_BACKEND = "dlib"

__all__ = [
    "BACKENDS",
    "DEMO_BACKEND",
    "EMBEDDING_DIMS",
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "MIN_IMAGE_SIDE",
    "SPACE_ANTELOPEV2",
    "SPACE_DLIB",
    "Face",
    "FaceAnalyzer",
    "choose_face",
    "several_faces",
    "create_face_analyzer",
    "load_image",
]


def create_face_analyzer(backend: str = "auto", root: str | Path | None = None, **opts: Any) -> FaceAnalyzer:
    """Build a face analyzer.

    ``auto`` picks antelopev2 when its two files are found (in ``root``, ``$INSTANTID_ANTELOPEV2`` or
    ``~/.insightface/models/antelopev2``), else dlib; an explicit ``root`` that lacks them is an error
    rather than a silent switch of embedding space. ``opts`` go to the backend's constructor
    (dlib: ``detector``, ``num_jitters``; antelopev2: ``det_size``, ``det_thresh``, ``providers``).
    """
    if backend not in BACKENDS:
        raise InvalidInputError(f"unknown face backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        from instantid.faces.antelopev2 import find_antelopev2

        backend = "antelopev2" if root is not None or find_antelopev2() is not None else "dlib"
    if backend == "antelopev2":
        from instantid.faces.antelopev2 import AntelopeV2Analyzer

        return AntelopeV2Analyzer(root=root, **opts)
    from instantid.faces.dlib_backend import DlibAnalyzer

    return DlibAnalyzer(**opts)
