"""One pipeline call as data: what the user asked (:class:`CallRequest`), what the call decided before its loop
(:class:`CallState`), and the people of a picture of several (:class:`Person`)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch

from instantid.core.denoise import StepInputs
from instantid.errors import InvalidInputError

EmbeddingInput = np.ndarray | torch.Tensor | Sequence[float] | Sequence[Sequence[float]]


MaskInput = PIL.Image.Image | np.ndarray | torch.Tensor


@dataclass(frozen=True)
class Person:
    """One person in a picture of several (paper: multi-identity synthesis), for ``identities=[...]``."""

    image_embeds: EmbeddingInput  # (E,) or (N, E) reference embeddings of this person (averaged)
    keypoints: Any  # keypoint picture (draw_kps) at the output size: where and how this face is posed
    mask: MaskInput | None = None  # this person's region, white inside; required when there are several
    weights: Sequence[float] | None = None  # one per reference embedding (weighted mean)


TEXT_TO_IMAGE, IMAGE_TO_IMAGE, INPAINT = "text-to-image", "image-to-image", "inpaint"
EVERY = (TEXT_TO_IMAGE, IMAGE_TO_IMAGE, INPAINT)
REPAINTING = (IMAGE_TO_IMAGE, INPAINT)


def arg(default: Any = None, *, pipelines: tuple[str, ...] = EVERY) -> Any:
    """A ``__call__`` argument with its default and the pipelines that take it."""
    return dataclasses.field(default=default, metadata={"pipelines": pipelines})


@dataclass(frozen=True)
class CallRequest:
    """One ``__call__`` as the user made it, before anything is computed: the one declaration of every argument
    of the three InstantID pipelines, in the published order (diffusers' SDXL ControlNet pipelines, InstantID's
    own last). Each pipeline's ``__call__`` signature is derived from it by :func:`instantid_call`: positional
    calls written against the published pipelines keep working."""

    prompt: str | list[str] | None = arg()
    prompt_2: str | list[str] | None = arg()
    init_image: Any = arg(pipelines=REPAINTING)  # ``image``: the picture to start from (repainting pipelines)
    mask_image: Any = arg(pipelines=(INPAINT,))  # white = repaint
    keypoints: Any = arg()  # the control image(s): ``image`` (text-to-image) or ``control_image``
    height: int | None = arg()
    width: int | None = arg()
    padding_mask_crop: int | None = arg(pipelines=(INPAINT,))  # repaint a box around the mask (diffusers)
    strength: float = arg(0.8, pipelines=REPAINTING)
    num_inference_steps: int = arg(50)
    guidance_scale: float = arg(5.0)
    negative_prompt: str | list[str] | None = arg()
    negative_prompt_2: str | list[str] | None = arg()
    num_images_per_prompt: int = arg(1)
    eta: float = arg(0.0)
    generator: torch.Generator | list[torch.Generator] | None = arg()
    latents: torch.Tensor | None = arg()
    prompt_embeds: torch.Tensor | None = arg()
    negative_prompt_embeds: torch.Tensor | None = arg()
    pooled_prompt_embeds: torch.Tensor | None = arg()
    negative_pooled_prompt_embeds: torch.Tensor | None = arg()
    image_embeds: EmbeddingInput | None = arg()
    output_type: str = arg("pil")
    return_dict: bool = arg(True)
    cross_attention_kwargs: dict[str, Any] | None = arg()
    controlnet_conditioning_scale: float | list[float] = arg(1.0)
    guess_mode: bool = arg(False)
    control_guidance_start: float | list[float] = arg(0.0)
    control_guidance_end: float | list[float] = arg(1.0)
    original_size: tuple[int, int] | None = arg()
    crops_coords_top_left: tuple[int, int] = arg((0, 0))
    target_size: tuple[int, int] | None = arg()
    negative_original_size: tuple[int, int] | None = arg()
    negative_crops_coords_top_left: tuple[int, int] = arg((0, 0))
    negative_target_size: tuple[int, int] | None = arg()
    aesthetic_score: float = arg(6.0, pipelines=REPAINTING)
    negative_aesthetic_score: float = arg(2.5, pipelines=REPAINTING)
    clip_skip: int | None = arg()
    callback_on_step_end: Callable | None = arg()
    callback_on_step_end_tensor_inputs: Sequence[str] = arg(("latents",))
    # InstantID's own
    image_embeds_weights: Sequence[float] | None = arg()
    ip_adapter_scale: float | None = arg()
    control_mask: MaskInput | None = arg()
    identities: Sequence[Person] | None = arg()
    controlnet_cache_interval: int = arg(1)  # lossy lever (instantid.core.denoise): ControlNets every N-th step
    # style reference picture(s) and their strength or diffusers' per-block scales (instantid.pipelines.style)
    style_image: Any = arg(pipelines=(TEXT_TO_IMAGE, IMAGE_TO_IMAGE))
    style_scale: float | dict | None = arg(pipelines=(TEXT_TO_IMAGE, IMAGE_TO_IMAGE))

    def arguments(self, pipeline: str) -> dict[str, Any]:
        """The call again as ``pipeline``'s keyword arguments (its own names)."""
        return {PARAMETER_NAMES[pipeline].get(f.name, f.name): getattr(self, f.name)
                for f in dataclasses.fields(self) if pipeline in f.metadata["pipelines"]}


# Where a pipeline names a field differently from the declaration, and where its defaults differ.
PARAMETER_NAMES = {
    TEXT_TO_IMAGE: {"keypoints": "image"},
    IMAGE_TO_IMAGE: {"init_image": "image", "keypoints": "control_image"},
    INPAINT: {"init_image": "image", "keypoints": "control_image"},
}
DEFAULTS = {
    TEXT_TO_IMAGE: {},
    IMAGE_TO_IMAGE: {"controlnet_conditioning_scale": 0.8},
    INPAINT: {"controlnet_conditioning_scale": 0.8, "strength": 0.9999},
}


def call_signature(pipeline: str) -> inspect.Signature:
    """``__call__(self, <the pipeline's arguments, in the published order>, **kwargs)``."""
    names, defaults = PARAMETER_NAMES[pipeline], DEFAULTS[pipeline]
    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
    parameters = [inspect.Parameter("self", keyword)]
    for f in dataclasses.fields(CallRequest):
        if pipeline in f.metadata["pipelines"]:
            parameters.append(inspect.Parameter(names.get(f.name, f.name), keyword, annotation=f.type,
                                                default=defaults.get(f.name, f.default)))
    parameters.append(inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD, annotation="Any"))
    return inspect.Signature(parameters)


def instantid_call(pipeline: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give ``run(self, req: CallRequest, kwargs)`` the ``__call__`` signature of ``pipeline``: arguments are
    bound as Python binds them (positionally or by name, defaults filled in) into one :class:`CallRequest`;
    the rest (diffusers' legacy ``callback`` / ``callback_steps``, anything unknown) goes to ``kwargs``."""
    signature = call_signature(pipeline)
    field_of = {name: field for field, name in PARAMETER_NAMES[pipeline].items()}

    def decorate(run: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(run)
        def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            values = dict(bound.arguments)
            values.pop("self")
            extra = values.pop("kwargs")
            req = CallRequest(**{field_of.get(name, name): value for name, value in values.items()})
            return run(self, req, extra)

        __call__.__signature__ = signature  # type: ignore[attr-defined]  # what help() and IDEs show
        return __call__

    return decorate


@dataclass(frozen=True)
class CallState:
    """Everything one call decided before its sampling loop; the loop only reads it."""

    batch: int  # prompts
    total: int  # prompts x images per prompt
    height: int
    width: int
    device: torch.device
    dtype: torch.dtype
    step: StepInputs  # what every denoising step reads (text, time ids, face tokens and regions, images)
    nets: tuple[torch.nn.Module, ...]  # IdentityNet first, then any extra ControlNets
    scales: tuple[float, ...]  # controlnet_conditioning_scale per net
    windows: tuple[tuple[float, ...], ...]  # per step, per net: 1 inside its guidance window, else 0
    extra_step_kwargs: dict[str, Any]  # the scheduler's eta / generator
    callback_on_step_end: Callable | None
    callback_inputs: tuple[str, ...]
    legacy_callback: Callable | None
    legacy_callback_steps: int


@dataclass(frozen=True)
class Encoded:
    """The call's text and face encodings (negative half first under guidance)."""

    batch: int
    total: int
    device: torch.device
    dtype: torch.dtype
    guess_mode: bool
    prompt_embeds: torch.Tensor  # (B', L, D)
    pooled: torch.Tensor  # (B', P)
    tokens: tuple[torch.Tensor, ...]  # per identity: (B', Q, D)
    projection_dim: int


def check_pair(name: str, value: Any) -> None:
    if value is not None and (
        not isinstance(value, (tuple, list)) or len(value) != 2 or not all(isinstance(v, int) for v in value)
    ):
        raise InvalidInputError(f"{name} must be a (height, width) or (top, left) pair of integers, got {value!r}")


def size_or(value: Sequence[int] | None, default: tuple[int, int]) -> tuple[int, int]:
    return tuple(value) if value is not None else default


def check_strength(strength: float) -> None:
    if not 0 < strength <= 1:
        raise InvalidInputError(f"strength must be in (0, 1], got {strength}")
