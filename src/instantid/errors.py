"""Typed errors: every surface (CLI, web UI, HTTP server) turns these into one readable line.

The CLI exits with code 2, the server answers 4xx (422 for bad input, 404 for unknown things), the web UI
raises ``gr.Error``. Messages are complete sentences a user can act on; no traceback is ever shown.
"""

from __future__ import annotations


class InstantIDError(Exception):
    """Base class of every error the project raises on purpose."""


class ImageReadError(InstantIDError):
    """An input file is missing, not an image, or truncated."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"cannot read image {source}: {reason}")
        self.source = source
        self.reason = reason


class NoFaceError(InstantIDError):
    """Face analysis ran but found no face."""

    def __init__(self, source: str) -> None:
        super().__init__(f"no face found in {source}")
        self.source = source


class WeightsError(InstantIDError):
    """A weight file or model folder is missing, unreadable or does not fit the model."""


class MissingWeightsError(WeightsError):
    """A needed weight file or folder is not where it was looked for."""


class IncompatibleWeightsError(WeightsError):
    """A checkpoint loads but its keys or shapes do not fit what it is being loaded into."""


class EmbeddingSpaceError(InstantIDError):
    """A face embedding comes from a different face model than the adapter was trained on."""


class InvalidInputError(InstantIDError, ValueError):
    """A parameter is out of range or inconsistent (bad size, strength, seed, prompt list...)."""


class FaceIndexError(InvalidInputError):
    """A face asked for by its index (0 = largest) is not in the photo."""
