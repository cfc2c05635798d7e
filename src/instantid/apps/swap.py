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

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict

from instantid.api.regions import control_pictures, crop_for_model, head_region, paste_back, region_mask
from instantid.api.results import GenerationResult, ImageInput
from instantid.api.settings import GenerationSettings, knob
from instantid.api.validation import Checked, validated
from instantid.faces import Face, load_image
from instantid.pipelines.schedulers import steps_for_strength

if TYPE_CHECKING:
    from instantid.api.generator import InstantID
    from instantid.api.identity import Identity


class SwapOptions(Checked):
    """The face-swap knobs (besides the generation settings: prompt, steps, strengths, seed...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    what = "swap option"

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
    return validated(SwapOptions, values, name)


def swap_face(
    app: InstantID, identity: Identity, scene: ImageInput, settings: GenerationSettings | None = None,
    options: SwapOptions | None = None, *, scene_name: str | None = None,
    progress: Callable[[int, int], None] | None = None, pipe: Any = None, target: Face | None = None,
) -> GenerationResult:
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

    return GenerationResult(images=outputs, seeds=seeds, settings=settings.updated(seed=seeds[0]), metadata=metadata)


__all__ = ["SwapOptions", "make_swap_options", "swap_face"]
