"""Face detail: a second pass that redraws the faces of generated images at the model's full resolution.

A face that is small in a full-body picture gets few latent pixels and comes out blurred and unlike the
person. As users do by hand with ADetailer-style tools, :func:`refine_faces` finds each face in the result,
crops it with a margin, upscales the crop to the model's working size, re-denoises it with InstantID
image-to-image at a moderate strength (the identity from the same :class:`~instantid.identity.Identity`, the
pose from the face's own keypoints) and blends it back with a feathered mask. Pixels outside each face's
feathered mask are left exactly as they were.

    images, info = refine_faces(app, identity, result.images, result.settings, result.seeds)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image

from instantid.errors import InvalidInputError
from instantid.settings import GenerationSettings
from instantid.swap import control_pictures, head_region, paste_back, region_mask

# ADetailer's default denoising strength: enough to redraw a small face's features, little enough to keep
# its colours, lighting and place in the picture.
DEFAULT_STRENGTH = 0.4


@dataclass(frozen=True)
class FaceDetailOptions:
    """How the second pass works; the generation settings (prompt, steps, strengths) come with the call."""

    strength: float = DEFAULT_STRENGTH  # img2img strength of the re-denoise, (0, 1]
    margin: float = 0.25  # room around the face box, as a fraction of the face size
    feather: float = 0.1  # width of the blend's soft edge, as a fraction of the face size
    context: float = 1.3  # crop side / feathered region side: surroundings the model sees
    resolution: int | None = None  # working size of the crop; None = the model's (1024 for SDXL)
    max_faces: int = 4  # largest first; more faces cost one pass each

    def __post_init__(self) -> None:
        if not 0 < self.strength <= 1:
            raise InvalidInputError(f"face detail strength must be in (0, 1], got {self.strength}")
        if self.margin < 0 or self.feather < 0 or self.context < 1 or self.max_faces < 1:
            raise InvalidInputError("face detail margin and feather must be >= 0, context >= 1, max_faces >= 1")
        if self.resolution is not None and (self.resolution < 64 or self.resolution % 8):
            raise InvalidInputError(f"face detail resolution must be a multiple of 8, >= 64, got {self.resolution}")


def refine_faces(
    app: Any, identity: Any, images: Sequence[Image.Image], settings: GenerationSettings,
    seeds: Sequence[int] | None = None, options: FaceDetailOptions | None = None, *,
    progress: Callable[[int, int], None] | None = None, pipe: Any = None,
) -> tuple[list[Image.Image], dict[str, Any]]:
    """Each image with its faces redrawn, and what was done (for the metadata under ``face_detail``).

    ``seeds`` (one per image, as generation used) make the pass reproducible; ``settings`` supplies prompt,
    style, steps, guidance, strengths and sampler. An image where no face is found is returned unchanged and
    recorded as skipped. Call it outside the model's lock (it takes the lock for each pass); ``pipe`` replaces
    the image-to-image pipeline (tests).
    """
    from instantid.inpaint import img2img_pipeline

    options = options or FaceDetailOptions()
    if seeds is not None and len(seeds) != len(images):
        raise InvalidInputError(f"give one seed per image ({len(images)}), got {len(seeds)}")
    resolution = options.resolution or app.min_side
    pipe = pipe or img2img_pipeline(app.pipe)
    refined: list[Image.Image] = []
    reports: list[dict[str, Any]] = []
    for i, image in enumerate(images):
        faces = app.analyze(image, f"generated image {i + 1}")[: options.max_faces]
        done = []
        for face in faces:
            region = head_region(face, image.size, margin=options.margin, feather=options.feather,
                                 resolution=resolution, head=False, context=options.context)
            mask = region_mask(region)
            crop = image.crop(region.crop).resize(region.work_size, Image.LANCZOS)
            kps_image, face_mask = control_pictures(face, region, settings.enhance_face_region)
            seed = None if seeds is None else seeds[i]
            # At least one denoising step however low the strength (img2img runs int(steps * strength)).
            one = settings.updated(num_images=1, seed=seed if seed is not None else settings.seed,
                                   steps=max(settings.steps, math.ceil(1 / options.strength)))
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
        "ran": any(r["faces"] for r in reports), **asdict(options), "resolution": resolution,
        "denoising_steps": int(max(settings.steps, math.ceil(1 / options.strength)) * options.strength),
        "images": reports,
    }
    return refined, info


__all__ = ["DEFAULT_STRENGTH", "FaceDetailOptions", "refine_faces"]
