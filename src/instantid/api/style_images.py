"""Style reference pictures (InstantStyle), read once into a :class:`StyleImages` value that every surface hands to
:meth:`InstantID.generate` / ``generate_group`` (``style=``), as face photos become an Identity.

The pictures steer the style adapter (:mod:`instantid.core.style`); the settings ``style_strength`` and
``style_blocks`` say how much and where. What an output records: each picture's name and SHA-256 (of the file's
bytes, what ``sha256sum`` prints; of the decoded RGB pixels for an in-memory picture), the strength, the blocks
and their per-block scales, and the style adapter.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from instantid.api.face_side import content_hash
from instantid.api.results import ImageInput
from instantid.errors import InvalidInputError
from instantid.faces import load_image

MAX_STYLE_IMAGES = 4  # 4 tokens each beside the text's 77: more would drown the prompt


@dataclass(frozen=True)
class StyleImages:
    """Decoded style reference pictures with their names and hashes."""

    images: tuple[Image.Image, ...]  # upright 8-bit RGB
    names: tuple[str, ...]
    sha256: tuple[str, ...]

    def metadata(self) -> list[dict[str, str]]:
        return [{"name": n, "sha256": h} for n, h in zip(self.names, self.sha256, strict=True)]


def _pixels_hash(image: Image.Image) -> str:
    digest = hashlib.sha256(f"{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def load_style_images(sources: ImageInput | Sequence[ImageInput], names: Sequence[str] | None = None,
                      full_paths: bool = False) -> StyleImages:
    """Read style pictures (paths, bytes, PIL images); an unreadable one is an ImageReadError naming it."""
    if isinstance(sources, StyleImages):
        return sources
    items = [sources] if isinstance(sources, (str, Path, bytes, Image.Image)) else list(sources)
    if not 1 <= len(items) <= MAX_STYLE_IMAGES:
        raise InvalidInputError(f"give 1 to {MAX_STYLE_IMAGES} style images, got {len(items)}")
    if names is not None and len(names) != len(items):
        raise InvalidInputError(f"give one name per style image ({len(items)}), got {len(names)}")
    labels = list(names) if names is not None else [
        (str(Path(s).resolve()) if full_paths else Path(s).name) if isinstance(s, (str, Path))
        else f"style image {i + 1}" for i, s in enumerate(items)]
    images = tuple(load_image(source, label) for source, label in zip(items, labels, strict=True))
    hashes = tuple(content_hash(s) or _pixels_hash(image) for s, image in zip(items, images, strict=True))
    return StyleImages(images, tuple(labels), hashes)


def style_metadata(style: StyleImages, strength: float, blocks: str, adapter: str | None) -> dict[str, Any]:
    """What an output records about its style reference."""
    from instantid.core.style_blocks import block_scales

    return {"images": style.metadata(), "strength": strength, "blocks": blocks,
            "block_scales": block_scales(blocks, strength), "adapter": adapter}
