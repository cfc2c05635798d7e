"""Face detail on an existing picture as a job (``POST /v1/detail``, the web UI's "Face detail" tab): the faces
of the picture redrawn as the person of the reference photos by :func:`instantid.api.face_detail.refine_faces`,
as ``instantid detail`` does on the command line (which writes its records with :func:`detail_picture` too).

The pass's knobs are declared once, in :class:`instantid.api.face_detail.FaceDetailOptions` (``DetailOptions`` here,
re-exported with :func:`~instantid.api.face_detail.make_detail_options` for the schema and the UI).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from instantid.api.face_detail import DetailOptions, make_detail_options
from instantid.api.settings import MAX_SEED, GenerationSettings
from instantid.errors import NoFaceError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from PIL import Image

    from instantid.api.generator import GenerationResult, InstantID
    from instantid.api.identity import Identity
    from instantid.faces import Face


def detail_picture(model: InstantID, identity: Identity, picture: Image.Image, name: str,
                   settings: GenerationSettings, options: DetailOptions,
                   progress: Callable[[int, int], None] | None = None, faces: Sequence[Face] | None = None
                   ) -> GenerationResult:
    """``picture`` (upright RGB) with its faces redrawn as ``identity``: one image with its metadata (task
    ``face_detail``, the source picture's name, what the pass did), the one record format of ``instantid
    detail``, ``/v1/detail`` and the web UI. ``faces``: the picture's faces as already found (largest first),
    else found here. A picture without a face is a :class:`NoFaceError` (nothing is written)."""
    from instantid.api.face_detail import refine_faces
    from instantid.api.generator import GenerationResult

    seed = settings.seed if settings.seed is not None else random.randint(0, MAX_SEED)
    settings = model.call_settings(settings, seed=seed)  # the loaded preset's steps and guidance where unset
    images, info = refine_faces(model, identity, [picture], settings, [seed], options, progress=progress,
                                faces=None if faces is None else [faces])
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
