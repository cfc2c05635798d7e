"""Face detail: a second pass that redraws the faces of generated images at the model's full resolution.

A face that is small in a full-body picture gets few latent pixels and comes out blurred and unlike the
person. As users do by hand with ADetailer-style tools, :func:`refine_faces` finds each face in the result,
crops it with a margin, upscales the crop to the model's working size, re-denoises it with InstantID
image-to-image at a moderate strength (the identity from the same :class:`~instantid.api.identity.Identity`, the
pose from the face's own keypoints) and blends it back with a feathered mask. Pixels outside each face's
feathered mask are left exactly as they were.

    images, info = refine_faces(app, identity, result.images, result.settings, result.seeds)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image
from pydantic import ConfigDict

from instantid.api.regions import control_pictures, head_region, paste_back, region_mask
from instantid.api.settings import GenerationSettings, face_detail_strength_knob, knob
from instantid.api.validation import Checked, validated
from instantid.errors import InvalidInputError
from instantid.pipelines.schedulers import steps_for_strength

if TYPE_CHECKING:
    from instantid.api.identity import Identity
    from instantid.api.results import ImageInput, Progress
    from instantid.faces import Face


class Model(Protocol):
    """What the pass needs of a loaded model: an :class:`~instantid.InstantID` is one (a Protocol, so this module
    stays below the one that calls it)."""

    pipe: Any
    min_side: int

    def analyze(self, image: ImageInput, name: str | None = None) -> list[Face]: ...

    def run_pipeline(self, pipe: Any, settings: GenerationSettings, progress: Progress | None = None,
                     **arguments: Any) -> tuple[list[Image.Image], list[int], Any]: ...


DEFAULT_STRENGTH = GenerationSettings.model_fields["face_detail_strength"].default


class FaceDetailOptions(Checked):
    """How the second pass works, declared once (type, default, range, help) like
    :class:`~instantid.apps.swap.SwapOptions`: ``instantid detail``'s flags, the HTTP fields of ``/v1/detail`` and the
    web UI's controls derive from it. The generation settings (prompt, steps, strengths) come with the call."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    what = "face detail option"

    strength: float = face_detail_strength_knob()
    margin: float = knob(0.25, "Room around each face box, as a fraction of the face size.", ui="slider",
                         step=0.05, ge=0, le=2)
    feather: float = knob(0.1, "Width of the soft edge, as a fraction of the face size.", ui="slider",
                          step=0.01, advanced=True, ge=0, le=1)
    context: float = knob(1.3, "Crop side over the redrawn region's side: how much of the surroundings the "
                          "model sees.", ui="slider", step=0.05, advanced=True, ge=1, le=3)
    max_faces: int = knob(4, "Faces redrawn, largest first (each costs one pass).", ui="slider", step=1,
                          advanced=True, ge=1, le=16)
    resolution: int | None = knob(None, "Working resolution of each face crop (default: the model's, 1024 for "
                                  "SDXL).", advanced=True, ge=64, le=2048, multiple_of=8)


DetailOptions = FaceDetailOptions  # the name the job service, the web UI and the HTTP schema use


def make_detail_options(values: dict[str, Any], name: Callable[[str], str] = lambda n: n) -> FaceDetailOptions:
    """Validate ``values`` into :class:`FaceDetailOptions`; errors are one :class:`InvalidInputError` line naming
    the field as the calling surface spells it (``name``: a CLI flag, a UI label)."""
    return validated(FaceDetailOptions, values, name)


def refine_faces(
    app: Model, identity: Identity, images: Sequence[Image.Image], settings: GenerationSettings,
    seeds: Sequence[int] | None = None, options: FaceDetailOptions | None = None, *,
    progress: Callable[[int, int], None] | None = None, pipe: Any = None,
    faces: Sequence[Sequence[Face] | None] | None = None,
) -> tuple[list[Image.Image], dict[str, Any]]:
    """Each image with its faces redrawn, and what was done (for the metadata under ``face_detail``).

    ``seeds`` (one per image, as generation used) make the pass reproducible; ``settings`` supplies prompt,
    style, steps, guidance, strengths and sampler. An image where no face is found is returned unchanged and
    recorded as skipped. Call it outside the model's lock (it takes the lock for each pass); ``pipe`` replaces
    the image-to-image pipeline (tests). ``faces``: per image, its faces as the caller already found them
    (largest first, e.g. when a job was checked at submit; None for an image: found here), so no picture is
    analysed twice.
    """
    from instantid.pipelines.inpaint import img2img_pipeline

    options = options or FaceDetailOptions()
    if seeds is not None and len(seeds) != len(images):
        raise InvalidInputError(f"give one seed per image ({len(images)}), got {len(seeds)}")
    if faces is not None and len(faces) != len(images):
        raise InvalidInputError(f"give the faces of each image ({len(images)}), got {len(faces)}")
    resolution = options.resolution or app.min_side
    steps = steps_for_strength(settings.steps, options.strength)
    pipe = pipe or img2img_pipeline(app.pipe)
    refined: list[Image.Image] = []
    reports: list[dict[str, Any]] = []
    for i, image in enumerate(images):
        known = faces[i] if faces is not None else None
        found = known if known is not None else app.analyze(image, f"generated image {i + 1}")
        done = []
        for face in list(found)[: options.max_faces]:
            region = head_region(face, image.size, margin=options.margin, feather=options.feather,
                                 resolution=resolution, head=False, context=options.context)
            mask = region_mask(region)
            crop = image.crop(region.crop).resize(region.work_size, Image.LANCZOS)
            kps_image, face_mask = control_pictures(face, region, settings.enhance_face_region)
            seed = None if seeds is None else seeds[i]
            one = settings.updated(num_images=1, seed=seed if seed is not None else settings.seed,
                                   steps=steps)
            painted, _, _ = app.run_pipeline(
                pipe, one, progress, image=crop, control_image=kps_image, control_mask=face_mask,
                strength=options.strength, width=region.work_size[0], height=region.work_size[1],
                image_embeds=identity.embedding,
            )
            image = paste_back(image, painted[0], region, mask)
            done.append(region.to_dict())
        refined.append(image)
        reports.append({"faces": done, "skipped": None if done else "no face found"})
    info = {
        "ran": any(r["faces"] for r in reports), **options.model_dump(), "resolution": resolution,
        "denoising_steps": int(steps * options.strength),
        "images": reports,
    }
    return refined, info


__all__ = ["DEFAULT_STRENGTH", "DetailOptions", "FaceDetailOptions", "make_detail_options", "refine_faces"]
