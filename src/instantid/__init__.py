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

from instantid._moved import install as _install_old_paths
from instantid.core.keypoints import draw_kps
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

_install_old_paths()

try:
    __version__ = _metadata.version("instantid")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

_LAZY = {
    "StableDiffusionXLInstantIDPipeline": "instantid.pipelines.sdxl",
    "StableDiffusionXLInstantIDImg2ImgPipeline": "instantid.pipelines.sdxl",
    "average_embeddings": "instantid.pipelines.encoding",
    "InstantID": "instantid.api.generator",
    "GenerationSettings": "instantid.api.settings",
    "Identity": "instantid.api.identity",
    "Person": "instantid.pipelines.call",
    "nearest_face_regions": "instantid.api.regions",
    "StableDiffusionXLInstantIDInpaintPipeline": "instantid.pipelines.inpaint",
    "ModelSettings": "instantid.api.model_settings",
    "build_tiny_instantid": "instantid.io.tiny",
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
