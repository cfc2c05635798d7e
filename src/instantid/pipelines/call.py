"""One pipeline call as data: what the user asked (:class:`CallRequest`), what the call decided before its loop
(:class:`CallState`), and the people of a picture of several (:class:`Person`)."""

from __future__ import annotations

import dataclasses
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


@dataclass(frozen=True)
class CallRequest:
    """One ``__call__`` as the user made it (diffusers' argument names), before anything is computed."""

    prompt: str | list[str] | None
    prompt_2: str | list[str] | None
    negative_prompt: str | list[str] | None
    negative_prompt_2: str | list[str] | None
    prompt_embeds: torch.Tensor | None
    negative_prompt_embeds: torch.Tensor | None
    pooled_prompt_embeds: torch.Tensor | None
    negative_pooled_prompt_embeds: torch.Tensor | None
    keypoints: Any  # the control image(s): ``image`` (text-to-image) or ``control_image`` (image-to-image)
    image_embeds: EmbeddingInput | None
    image_embeds_weights: Sequence[float] | None
    control_mask: MaskInput | None
    identities: Sequence[Person] | None
    height: int | None
    width: int | None
    num_inference_steps: int
    guidance_scale: float
    num_images_per_prompt: int
    eta: float
    generator: torch.Generator | list[torch.Generator] | None
    output_type: str
    return_dict: bool
    cross_attention_kwargs: dict[str, Any] | None
    controlnet_conditioning_scale: float | list[float]
    ip_adapter_scale: float | None
    guess_mode: bool
    control_guidance_start: float | list[float]
    control_guidance_end: float | list[float]
    original_size: tuple[int, int] | None
    crops_coords_top_left: tuple[int, int]
    target_size: tuple[int, int] | None
    negative_original_size: tuple[int, int] | None
    negative_crops_coords_top_left: tuple[int, int]
    negative_target_size: tuple[int, int] | None
    clip_skip: int | None
    callback_on_step_end: Callable | None
    callback_on_step_end_tensor_inputs: list[str]
    controlnet_cache_interval: int = 1  # lossy lever (instantid.core.denoise): ControlNets every N-th step

    @classmethod
    def of(cls, arguments: dict[str, Any], keypoints: Any) -> CallRequest:
        """From ``__call__``'s ``locals()``: every field is one of its parameters (a field with a default may be
        missing from a pipeline that does not offer it)."""
        fields = [f for f in dataclasses.fields(cls) if f.name != "keypoints"]
        return cls(keypoints=keypoints, **{
            f.name: arguments[f.name] if f.default is dataclasses.MISSING else arguments.get(f.name, f.default)
            for f in fields
        })


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
