"""InstantID: zero-shot identity-preserving image generation for SDXL.

Drop-in API (same names as the published code)::

    from instantid import StableDiffusionXLInstantIDPipeline, draw_kps

High-level API: :class:`instantid.InstantID` (loads everything, generates from a face photo).
Heavy modules are imported lazily so ``import instantid`` and ``instantid --help`` stay fast.
"""

from __future__ import annotations

import importlib
from importlib import metadata as _metadata
from typing import Any

from instantid.errors import (
    EmbeddingSpaceError,
    ImageReadError,
    IncompatibleWeightsError,
    InstantIDError,
    InvalidInputError,
    MissingWeightsError,
    NoFaceError,
    WeightsError,
)
from instantid.keypoints import draw_kps

try:
    __version__ = _metadata.version("instantid")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

_LAZY = {
    "StableDiffusionXLInstantIDPipeline": "instantid.pipeline",
    "StableDiffusionXLInstantIDImg2ImgPipeline": "instantid.pipeline",
    "average_embeddings": "instantid.pipeline",
    "InstantID": "instantid.generator",
    "GenerationSettings": "instantid.settings",
    "Identity": "instantid.identity",
    "Person": "instantid.pipeline",
    "nearest_face_regions": "instantid.pipeline",
    "StableDiffusionXLInstantIDInpaintPipeline": "instantid.inpaint",
    "ModelSettings": "instantid.model_settings",
    "build_tiny_instantid": "instantid.tiny",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'instantid' has no attribute {name!r}")


__all__ = [
    "EmbeddingSpaceError",
    "ImageReadError",
    "IncompatibleWeightsError",
    "InstantIDError",
    "InvalidInputError",
    "MissingWeightsError",
    "NoFaceError",
    "WeightsError",
    "draw_kps",
    *_LAZY,
]
