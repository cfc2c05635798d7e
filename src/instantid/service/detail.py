"""Face detail on an existing picture as a job (``POST /v1/detail``, the web UI's "Face detail" tab): the faces
of the picture redrawn as the person of the reference photos by :func:`instantid.face_detail.refine_faces`,
as ``instantid detail`` does on the command line.

:class:`DetailOptions` declares the pass's knobs once (type, default, range, help), in the shape of
:class:`~instantid.swap.SwapOptions`, so the HTTP schema and the web UI controls derive from it; its defaults
are :class:`~instantid.face_detail.FaceDetailOptions`'s own, and :meth:`DetailOptions.face_detail_options`
hands the validated values to it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError

from instantid.errors import InvalidInputError, NoFaceError
from instantid.face_detail import FaceDetailOptions
from instantid.settings import MAX_SEED, GenerationSettings, knob

if TYPE_CHECKING:
    from PIL import Image

    from instantid.generator import GenerationResult, InstantID
    from instantid.identity import Identity

_DEFAULT = FaceDetailOptions()  # the pass's own defaults: declared there, not repeated here


class DetailOptions(BaseModel):
    """The face-detail knobs (besides the generation settings: prompt, steps, strengths, seed...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strength: float = knob(_DEFAULT.strength, "How much each face is re-denoised (1 = redrawn from scratch).",
                           ui="slider", step=0.05, ge=0.05, le=1)
    margin: float = knob(_DEFAULT.margin, "Room around each face box, as a fraction of the face size.",
                         ui="slider", step=0.05, ge=0, le=2)
    feather: float = knob(_DEFAULT.feather, "Width of the soft edge, as a fraction of the face size.", ui="slider",
                          step=0.01, advanced=True, ge=0, le=1)
    context: float = knob(_DEFAULT.context, "Crop side over the redrawn region's side: how much of the "
                          "surroundings the model sees.", ui="slider", step=0.05, advanced=True, ge=1, le=3)
    max_faces: int = knob(_DEFAULT.max_faces, "Faces redrawn, largest first (each costs one pass).", ui="slider",
                          step=1, advanced=True, ge=1, le=16)
    resolution: int | None = knob(_DEFAULT.resolution, "Working resolution of each face crop (default: the "
                                  "model's, 1024 for SDXL).", advanced=True, ge=64, le=2048, multiple_of=8)

    def face_detail_options(self) -> FaceDetailOptions:
        return FaceDetailOptions(**self.model_dump())


def make_detail_options(values: dict[str, Any], name: Callable[[str], str] = lambda n: n) -> DetailOptions:
    """Validate ``values`` into :class:`DetailOptions`; errors are one :class:`InvalidInputError` line naming the
    field as the calling surface spells it."""
    try:
        return DetailOptions.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "face detail options"
        if first["type"] == "extra_forbidden":
            raise InvalidInputError(f"unknown face detail option {name(field)!r}; known: "
                                    f"{', '.join(DetailOptions.model_fields)}") from None
        message = first["msg"][0].lower() + first["msg"][1:]
        raise InvalidInputError(f"{name(field)}: {message}, got {first.get('input')!r}") from None


def detail_picture(model: InstantID, identity: Identity, picture: Image.Image, name: str,
                   settings: GenerationSettings, options: DetailOptions,
                   progress: Callable[[int, int], None] | None = None) -> GenerationResult:
    """``picture`` (upright RGB) with its faces redrawn as ``identity``: one image, recorded like the images of
    ``instantid detail`` (task ``face_detail``, the source picture's name, what the pass did). A picture in
    which the pass finds no face is a :class:`NoFaceError` (nothing is written)."""
    from instantid.face_detail import refine_faces
    from instantid.generator import GenerationResult

    seed = settings.seed if settings.seed is not None else random.randint(0, MAX_SEED)
    settings = settings.updated(seed=seed)
    images, info = refine_faces(model, identity, [picture], settings, [seed], options.face_detail_options(),
                                progress=progress)
    report = info["images"][0]
    if report["skipped"]:
        raise NoFaceError(f"the picture {name}")
    metadata = {
        **model.call_metadata(identity, settings, model.call_scheduler(settings), "face_detail"),
        "source": name, "width": images[0].width, "height": images[0].height,
        "face_detail": {**{k: v for k, v in info.items() if k != "images"}, **report},
    }
    return GenerationResult(images=images, seeds=[seed], settings=settings, metadata=metadata)


__all__ = ["DetailOptions", "detail_picture", "make_detail_options"]
