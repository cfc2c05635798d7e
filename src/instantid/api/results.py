"""What a generation call gives back, and the picture inputs every API call takes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from instantid.api.settings import GenerationSettings
from instantid.faces.images import ImageSource

ImageInput = ImageSource  # a path, the bytes of a file or a picture: what every API call reads photos from
Progress = Callable[[int, int], None]


@dataclass
class GenerationResult:
    """Images plus everything needed to reproduce them."""

    images: list[Image.Image]
    seeds: list[int]
    settings: GenerationSettings
    metadata: dict[str, Any] = field(default_factory=dict)  # JSON-able; written beside every output

    def image_metadata(self, index: int) -> dict[str, Any]:
        """Metadata of one image (its own seed)."""
        return {**self.metadata, "seed": self.seeds[index], "index": index}


def versions() -> dict[str, str]:
    """The library versions a picture was made with (its metadata records them)."""
    import diffusers
    import torch

    from instantid import __version__

    return {"instantid": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__}
