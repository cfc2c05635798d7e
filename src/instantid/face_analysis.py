"""Face analysis (the paper's face encoder input and keypoints); the code lives in :mod:`instantid.faces`."""

from instantid.faces import (
    BACKENDS,
    EMBEDDING_DIMS,
    MAX_PIXELS,
    SPACE_ANTELOPEV2,
    SPACE_DLIB,
    Face,
    FaceAnalyzer,
    create_face_analyzer,
    load_image,
)

__all__ = [
    "BACKENDS",
    "EMBEDDING_DIMS",
    "MAX_PIXELS",
    "SPACE_ANTELOPEV2",
    "SPACE_DLIB",
    "Face",
    "FaceAnalyzer",
    "create_face_analyzer",
    "load_image",
]
