"""Face swap: put a person (an :class:`~instantid.api.identity.Identity`) into an existing photo.

    person = app.prepare_identity("me.jpg")
    result = swap_face(app, person, "scene.jpg", GenerationSettings(prompt="a photo of a man"), SwapOptions())

1. the target face is found in the scene (``target_index``: 0 = largest);
2. a head-shaped region around it (an ellipse from chin to crown, plus ``head_margin``; InstantID needs most of
   the head, not only the face box, to change a likeness) is cropped with some context and resized to the
   model's working resolution, so a 4000 px photo costs what a 1024 px one does;
3. :class:`~instantid.pipelines.inpaint.StableDiffusionXLInstantIDInpaintPipeline` repaints the head there, posed by the
   target face's own keypoints, with the reference's identity;
4. the result is scaled back and blended in with a feathered mask. Pixels outside the feathered mask are the
   input's, bit for bit.

The geometry (:func:`head_region`, :func:`region_mask`, :func:`paste_back`) is shared with the face-detail pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, ValidationError

from instantid.api.settings import GenerationSettings, knob
from instantid.errors import InvalidInputError
from instantid.faces import Face, load_image

# The head outline relative to a detector's face box (brows to chin): the crown sits about 0.45 box heights
# above the box, the ears about 5 % outside it; measured on the shared photos with the dlib and SCRFD boxes.
CROWN_ABOVE_BOX = 0.45
HEAD_WIDTH = 1.1


class SwapOptions(BaseModel):
    """The face-swap knobs (besides the generation settings: prompt, steps, strengths, seed...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_index: int = knob(0, "Which face of the scene to replace, 0 = largest.", ge=0, le=63)
    head_margin: float = knob(0.3, "Extra room around the head outline, as a fraction of the face size "
                              "(InstantID needs most of the head to change a likeness).", ui="slider",
                              step=0.05, ge=0, le=2)
    strength: float = knob(0.85, "How much of the masked area is repainted (1 = from scratch).", ui="slider",
                           step=0.05, ge=0.05, le=1)
    feather: float = knob(0.1, "Width of the soft edge, as a fraction of the face size.", ui="slider", step=0.01,
                          advanced=True, ge=0, le=1)
    resolution: int | None = knob(None, "Working resolution of the crop (default: the model's, 1024 for SDXL).",
                                  advanced=True, ge=64, le=2048, multiple_of=8)


def make_swap_options(values: dict[str, Any], name: Callable[[str], str] = lambda n: n) -> SwapOptions:
    """Validate ``values`` into :class:`SwapOptions`; errors are one :class:`InvalidInputError` line naming the
    field as the calling surface spells it (``name``: e.g. the CLI flag)."""
    try:
        return SwapOptions.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "swap options"
        if first["type"] == "extra_forbidden":
            raise InvalidInputError(f"unknown swap option {name(field)!r}; known: {', '.join(SwapOptions.model_fields)}"
                                    ) from None
        message = first["msg"][0].lower() + first["msg"][1:]
        raise InvalidInputError(f"{name(field)}: {message}, got {first.get('input')!r}") from None


@dataclass(frozen=True)
class Region:
    """Where a face is worked on, in photo pixels."""

    face_box: tuple[float, float, float, float]
    ellipse: tuple[float, float, float, float]  # cx, cy, rx, ry: repainted in full
    feather: float  # the soft edge's width outside the ellipse (px)
    crop: tuple[int, int, int, int]  # x1, y1, x2, y2: what the model sees
    work_size: tuple[int, int]  # (w, h) the crop is resized to for the model

    @property
    def crop_size(self) -> tuple[int, int]:
        return self.crop[2] - self.crop[0], self.crop[3] - self.crop[1]

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """Photo pixel coordinates -> working-resolution coordinates of the crop."""
        (cw, ch), (ww, wh) = self.crop_size, self.work_size
        return (np.asarray(points, dtype=np.float64) - self.crop[:2]) * (ww / cw, wh / ch)

    def to_dict(self) -> dict[str, Any]:
        return {
            "face_box": [round(v, 1) for v in self.face_box], "ellipse": [round(v, 1) for v in self.ellipse],
            "feather_px": round(self.feather, 1), "crop_box": list(self.crop), "work_size": list(self.work_size),
        }


MIN_FEATHER_PX = 1e-3


def steps_for_strength(steps: int, strength: float) -> int:
    """The scheduler steps that make image-to-image at ``strength`` run at least one denoising step.

    diffusers runs ``int(steps * strength)`` of them, so 1 step at strength 0.85 would run none: the swap and
    face-detail passes raise the count to the smallest that runs one (what a user who asked for few steps
    means), never lower it."""
    count = max(steps, math.ceil(1 / strength))
    while int(count * strength) < 1:  # 1 / strength rounded down in floating point
        count += 1
    return count


def _work_size(crop_w: int, crop_h: int, resolution: int) -> tuple[int, int]:
    """The crop's long side at ``resolution``, both sides multiples of 8 (the VAE's stride)."""
    scale = resolution / max(crop_w, crop_h)
    return max(8, int(round(crop_w * scale / 8)) * 8), max(8, int(round(crop_h * scale / 8)) * 8)


def head_region(
    face: Face, image_size: tuple[int, int], *, margin: float, feather: float, resolution: int,
    head: bool = True, context: float = 1.25,
) -> Region:
    """The region to repaint around ``face``: an ellipse over the head (``head``) or the face box alone.

    ``margin`` and ``feather`` are fractions of the face size; ``context`` is how much wider than the
    feathered ellipse the crop is, so the model sees the surroundings it must blend into. The crop is square
    where the photo allows; it always holds the whole feathered ellipse (the part inside the photo).
    """
    if margin < 0 or feather < 0 or context < 1 or resolution < 8:
        raise InvalidInputError("margin and feather must be >= 0, context >= 1 and resolution >= 8")
    width, height = image_size
    x1, y1, x2, y2 = face.bbox
    w, h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    size = max(w, h)
    if head:  # chin to crown, ear to ear
        cx, cy = (x1 + x2) / 2, (y1 - CROWN_ABOVE_BOX * h + y2) / 2
        rx, ry = HEAD_WIDTH * w / 2, (1 + CROWN_ABOVE_BOX) * h / 2
    else:
        cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, w / 2, h / 2
    rx, ry, band = rx + margin * size, ry + margin * size, feather * size
    side = 2 * max(rx, ry) + 2 * band
    side = side * context
    crop_w, crop_h = min(math.ceil(side), width), min(math.ceil(side), height)
    left = int(min(max(round(cx - crop_w / 2), 0), width - crop_w))
    top = int(min(max(round(cy - crop_h / 2), 0), height - crop_h))
    crop = (left, top, left + crop_w, top + crop_h)
    return Region(face_box=tuple(float(v) for v in face.bbox), ellipse=(cx, cy, rx, ry), feather=band, crop=crop,
                  work_size=_work_size(crop_w, crop_h, resolution))


def region_mask(region: Region) -> np.ndarray:
    """The blend mask over the crop, (crop_h, crop_w) float32: 1 inside the ellipse, falling linearly to 0 over
    ``feather`` pixels outside it, exactly 0 beyond."""
    import cv2

    cx, cy, rx, ry = region.ellipse
    left, top, right, bottom = region.crop
    xs = np.arange(left, right, dtype=np.float64) + 0.5  # pixel centres
    ys = np.arange(top, bottom, dtype=np.float64)[:, None] + 0.5
    inside = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0
    if region.feather < MIN_FEATHER_PX:  # far below a pixel: a hard edge (and no float32 division by ~0)
        return inside.astype(np.float32)
    # Euclidean distance of every outside pixel to the nearest inside one.
    outside = np.ascontiguousarray((~inside).astype(np.uint8))
    distance = cv2.distanceTransform(outside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return np.clip(1.0 - distance / region.feather, 0.0, 1.0).astype(np.float32)


def crop_for_model(photo: Image.Image, region: Region, mask: np.ndarray) -> tuple[Image.Image, Image.Image]:
    """The crop and its repaint mask (white where the blend mask is above 0) at the working resolution."""
    crop = photo.crop(region.crop).resize(region.work_size, Image.LANCZOS)
    binary = Image.fromarray(((mask > 0) * 255).astype(np.uint8))
    # Resized with a max filter's effect: any covered pixel stays covered, so the blend never reaches past
    # what was repainted.
    work_mask = binary.resize(region.work_size, Image.BILINEAR).point(lambda v: 255 if v > 0 else 0)
    return crop, work_mask


def paste_back(photo: Image.Image, generated: Image.Image, region: Region, mask: np.ndarray) -> Image.Image:
    """``photo`` with ``generated`` (the repainted crop, any size) blended in through ``mask``.

    Where the mask is 0 the photo's pixels are copied, not recomputed, so they are exactly the input's.
    """
    result = photo.convert("RGB").copy()
    original = np.asarray(result.crop(region.crop), dtype=np.float64)
    painted = np.asarray(generated.convert("RGB").resize(region.crop_size, Image.LANCZOS), dtype=np.float64)
    weight = mask[..., None].astype(np.float64)
    blended = np.clip(np.round(original + (painted - original) * weight), 0, 255)
    blended = np.where(weight > 0, blended, original).astype(np.uint8)
    result.paste(Image.fromarray(blended), region.crop[:2])
    return result


def control_pictures(face: Face, region: Region, enhance_face_region: bool) -> tuple[Image.Image, Image.Image | None]:
    """The keypoint picture and (optionally) the face-region mask at the working resolution of ``region``."""
    from instantid.core.keypoints import draw_kps

    ww, wh = region.work_size
    kps_image = draw_kps(Image.new("RGB", (ww, wh)), region.to_crop(face.kps))
    if not enhance_face_region:
        return kps_image, None
    (fx1, fy1), (fx2, fy2) = region.to_crop(np.reshape(face.bbox, (2, 2)))
    face_mask = np.zeros((wh, ww, 3), dtype=np.uint8)
    face_mask[max(int(fy1), 0) : max(int(fy2), 0), max(int(fx1), 0) : max(int(fx2), 0)] = 255
    return kps_image, Image.fromarray(face_mask)


def swap_face(
    app: Any, identity: Any, scene: Any, settings: GenerationSettings | None = None,
    options: SwapOptions | None = None, *, scene_name: str | None = None,
    progress: Callable[[int, int], None] | None = None, pipe: Any = None, target: Face | None = None,
) -> Any:
    """``scene`` with its ``options.target_index``-th face repainted as ``identity``; a GenerationResult.

    ``settings`` gives the prompt, steps, strengths, seed and sampler (``width``/``height`` are ignored: the
    output is the scene's size). ``target`` is the scene's face when the caller has already found it (so the
    scene is not analysed twice). ``pipe`` replaces the inpainting pipeline (tests); by default it shares the
    app's loaded components.
    """
    from instantid.pipelines.inpaint import inpaint_pipeline

    settings = app.call_settings(settings)  # the loaded preset's steps and guidance where none were chosen
    options = options or SwapOptions()
    name = scene_name or (Path(scene).name if isinstance(scene, (str, Path)) else "scene image")
    if target is None:
        photo, target = app.find_face(scene, name, options.target_index)
    else:
        photo = load_image(scene, name)
    region = head_region(target, photo.size, margin=options.head_margin, feather=options.feather,
                         resolution=options.resolution or app.min_side)
    mask = region_mask(region)
    crop, work_mask = crop_for_model(photo, region, mask)
    kps_image, face_mask = control_pictures(target, region, settings.enhance_face_region)
    ww, wh = region.work_size
    steps = steps_for_strength(settings.steps, options.strength)
    images, seeds, used = app.run_pipeline(
        pipe or inpaint_pipeline(app.pipe), settings.updated(steps=steps), progress,
        image=crop, mask_image=work_mask, control_image=kps_image, control_mask=face_mask,
        strength=options.strength, width=ww, height=wh,
        image_embeds=identity.embedding,
    )
    outputs = [paste_back(photo, image, region, mask) for image in images]
    metadata = app.call_metadata(identity, settings.updated(seed=seeds[0]), used, "swap")
    metadata.update(
        width=photo.width, height=photo.height, pose_from=f"{name} (face {options.target_index})",
        swap={**options.model_dump(), "scene": name, "denoising_steps": int(steps * options.strength),
              "target_face": {"bbox": [float(v) for v in target.bbox], "kps": target.kps.tolist()},
              **region.to_dict()},
    )
    from instantid.api.generator import GenerationResult

    return GenerationResult(images=outputs, seeds=seeds, settings=settings.updated(seed=seeds[0]), metadata=metadata)


__all__ = [
    "Region", "SwapOptions", "crop_for_model", "head_region", "make_swap_options", "paste_back", "region_mask",
    "steps_for_strength", "swap_face",
]
