"""InstantID inpainting for SDXL, and running the image-to-image / inpainting variants of a loaded model.

:class:`StableDiffusionXLInstantIDInpaintPipeline` is diffusers' SDXL ControlNet inpainting pipeline plus what
InstantID adds (:class:`~instantid.pipelines.sdxl.InstantIDMixin`), drop-in style: ``image``, ``mask_image`` (white =
repaint), ``strength``, ``control_image`` (the keypoint picture) and ``image_embeds``. It works with

* an SDXL inpainting base (9-channel UNet): the UNet also reads the mask and the masked image's latents, as in
  diffusers; IdentityNet reads the 4 latent channels only, as it was trained;
* a plain SDXL base (4-channel UNet): after every step the latents outside the mask are replaced by the
  original image's latents noised to the same level (diffusers' rule), so only the mask is repainted.

``padding_mask_crop=N`` (diffusers' argument) repaints only a box around the mask, padded by N pixels, at the
model's size, and pastes it back: a small face in a large photo gets the model's full resolution.

Each step is the shared :func:`instantid.core.denoise.denoise_step`; the inpainting parts travel with the call
(the step-end blend) or last exactly as long as it (a forward pre-hook on the UNet for the extra channels: the
UNet is shared with the other variants, so one call at a time per model, as the model's lock in
:meth:`InstantID.run_pipeline <instantid.api.generator.InstantID.run_pipeline>` guarantees).

:func:`inpaint_pipeline` / :func:`img2img_pipeline` make these variants from a loaded text-to-image pipeline
without loading anything again (``from_pipe`` shares every module, the face adapter included), and
:meth:`InstantID.run_pipeline <instantid.api.generator.InstantID.run_pipeline>` runs one with an
:class:`~instantid.InstantID`'s settings, lock and sampler.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import PIL.Image
import torch
from diffusers import StableDiffusionXLControlNetInpaintPipeline
from diffusers.pipelines.stable_diffusion_xl.pipeline_output import StableDiffusionXLPipelineOutput
from diffusers.utils import logging as diffusers_logging

from instantid.errors import IncompatibleWeightsError, InvalidInputError
from instantid.pipelines.call import (
    INPAINT,
    CallRequest,
    CallState,
    check_strength,
    instantid_call,
    size_or,
)
from instantid.pipelines.sdxl import InstantIDMixin, StableDiffusionXLInstantIDImg2ImgPipeline
from instantid.pipelines.style import share_style_modules

LATENT_CHANNELS = 4
INPAINT_UNET_CHANNELS = 9  # latents + mask + masked-image latents


@contextmanager
def _extra_unet_channels(unet: torch.nn.Module, extra: torch.Tensor) -> Iterator[None]:
    """While open, every UNet forward gets ``extra`` (B', 5, h, w) appended to its input channels.

    The ControlNets are separate modules and keep reading the plain latents, which is what an inpainting
    UNet paired with IdentityNet needs and what :func:`~instantid.core.denoise.denoise_step` cannot tell apart.
    """

    def append(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        sample = args[0] if args else kwargs.pop("sample")
        if sample.shape[0] != extra.shape[0]:
            raise InvalidInputError(f"inpainting batch mismatch: {sample.shape[0]} latents, {extra.shape[0]} masks")
        sample = torch.cat([sample, extra.to(sample)], dim=1)
        return (sample, *args[1:]), kwargs

    handle = unet.register_forward_pre_hook(append, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


class StableDiffusionXLInstantIDInpaintPipeline(InstantIDMixin, StableDiffusionXLControlNetInpaintPipeline):
    """InstantID inpainting: repaint the white part of ``mask_image`` in ``image`` as the person of
    ``image_embeds``, posed by ``control_image`` (keypoints)."""

    repaints_masked = True  # a 9-channel SDXL inpainting UNet fits here (and a plain 4-channel one)

    # The step-end tensors every InstantID pipeline hands out (diffusers' mask tensors are not among them).
    _callback_tensor_inputs = [
        "latents", "prompt_embeds", "negative_prompt_embeds", "add_text_embeds", "add_time_ids",
        "negative_pooled_prompt_embeds", "add_neg_time_ids", "control_image",
    ]

    def prepare_control_image(
        self, image: Any, width: int, height: int, batch_size: int, num_images_per_prompt: int,
        device: torch.device, dtype: torch.dtype, crops_coords: Any = None, resize_mode: str = "default",
        do_classifier_free_guidance: bool = False, guess_mode: bool = False,
    ) -> torch.Tensor:
        """diffusers' helper with its crop arguments optional, so the mixin calls it like the other pipelines'."""
        return super().prepare_control_image(
            image, width, height, batch_size, num_images_per_prompt, device, dtype, crops_coords, resize_mode,
            do_classifier_free_guidance, guess_mode,
        )

    @torch.no_grad()
    @instantid_call(INPAINT)
    def __call__(self, req: CallRequest, kwargs: dict[str, Any]) -> StableDiffusionXLPipelineOutput | tuple:
        """Repaint the masked part of ``image``; the rest keeps the image's content. Sizes default to the
        keypoint picture's; ``image`` and ``mask_image`` are resized to them. With ``padding_mask_crop`` (diffusers'
        argument) only a box around the mask is repainted, at the model's size, and pasted back: see
        :meth:`_call_in_mask_crop`. ``controlnet_cache_interval``: as text-to-image."""
        # 0. diffusers' padding_mask_crop: this call again on the box around the mask, then pasted back.
        if req.padding_mask_crop is not None:
            arguments = req.arguments(INPAINT)
            del arguments["padding_mask_crop"]
            return self._call_in_mask_crop(req.padding_mask_crop, arguments, kwargs)

        # 1. Check inputs (cheap, before anything runs).
        self._check(req, kwargs)
        if req.init_image is None or req.mask_image is None:
            raise InvalidInputError("image (the picture to repaint) and mask_image (white = repaint) are required")
        check_strength(req.strength)
        channels = self.unet.config.in_channels
        if channels not in (LATENT_CHANNELS, INPAINT_UNET_CHANNELS):
            raise InvalidInputError(f"the UNet has {channels} input channels; inpainting needs 4 or 9")

        # 2. Encode the prompt (or take the given embeddings) and the faces.
        enc = self._encode(req)

        # 3. Control images decide the size; the image and the mask are resized to it.
        images = self._prepare_control_images(req, enc)
        height, width = images[0][0].shape[-2:]
        init = self.image_processor.preprocess(req.init_image, height=height, width=width).to(torch.float32)
        mask = self.mask_processor.preprocess(req.mask_image, height=height, width=width)
        masked_image = init * (mask < 0.5)

        # 4. Timesteps cut by strength; latents from the image noised to the first one (pure noise at 1).
        timesteps = self._strength_timesteps(req, enc.device)
        latents, noise, *image_latents = self.prepare_latents(
            enc.total, LATENT_CHANNELS, height, width, enc.dtype, enc.device, req.generator, req.latents,
            image=init, timestep=timesteps[:1].repeat(enc.total), is_strength_max=req.strength == 1.0,
            return_noise=True, return_image_latents=channels == LATENT_CHANNELS,
        )

        # 5. The mask at latent size (and the masked image's latents), doubled under guidance.
        mask, masked_latents = self.prepare_mask_latents(
            mask, masked_image, enc.total, height, width, enc.dtype, enc.device, req.generator,
            self.do_classifier_free_guidance,
        )

        # 6. SDXL micro-conditioning (sizes, or aesthetic scores for refiner-style bases).
        original = size_or(req.original_size, (height, width))
        target = size_or(req.target_size, (height, width))
        add_time_ids, negative_time_ids = self._get_add_time_ids(
            original, tuple(req.crops_coords_top_left), target, req.aesthetic_score, req.negative_aesthetic_score,
            dtype=enc.dtype, text_encoder_projection_dim=enc.projection_dim,
        )
        if req.negative_original_size is not None and req.negative_target_size is not None:
            _, negative_time_ids = self._get_add_time_ids(
                tuple(req.negative_original_size), tuple(req.negative_crops_coords_top_left),
                tuple(req.negative_target_size), req.aesthetic_score, req.negative_aesthetic_score, dtype=enc.dtype,
                text_encoder_projection_dim=enc.projection_dim,
            )

        # 7. Freeze the call, add the inpainting to it, denoise and decode.
        state = self._call_state(req, enc, images, add_time_ids, negative_time_ids, len(timesteps), None, kwargs)
        if channels == INPAINT_UNET_CHANNELS:
            with _extra_unet_channels(self.unet, torch.cat([mask, masked_latents], dim=1)):
                return self._finish(state, latents, timesteps, req.output_type, req.return_dict)
        keep = mask.chunk(2)[0] if self.do_classifier_free_guidance else mask
        state = self._with_blend(state, image_latents[0], noise, keep, timesteps)
        return self._finish(state, latents, timesteps, req.output_type, req.return_dict)

    def _call_in_mask_crop(self, pad: int, arguments: dict[str, Any], kwargs: dict[str, Any]) -> Any:
        """diffusers' ``padding_mask_crop``, as its SDXL inpainting pipelines read it: the mask's bounding box,
        padded by ``pad`` pixels and widened to the output's aspect ratio, is cut from every picture of the call
        (image, mask, keypoint pictures, face masks: all in the image's pixels), resized to the output size
        (``height`` x ``width``, default the image's), repainted there, and pasted back with the mask, so that
        outside the mask the result is the input picture, at the input's size. A small face in a large photo
        is thus repainted at the model's full resolution."""
        image, mask_image = arguments["image"], arguments["mask_image"]
        if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
            raise InvalidInputError(f"padding_mask_crop must be a whole number of pixels (0 or more), got {pad!r}")
        if not isinstance(image, PIL.Image.Image) or not isinstance(mask_image, PIL.Image.Image):
            raise InvalidInputError("padding_mask_crop needs image and mask_image as PIL pictures")
        if arguments["output_type"] != "pil":
            raise InvalidInputError(f"padding_mask_crop gives PIL pictures; output_type {arguments['output_type']!r} "
                                    "cannot be pasted back")
        height, width = self.image_processor.get_default_height_width(image, arguments["height"], arguments["width"])
        box = self.mask_processor.get_crop_region(mask_image, width, height, pad=pad)

        def cut(picture: Any, name: str, processor: Any = self.image_processor) -> Any:
            if picture is None:
                return None
            if isinstance(picture, (list, tuple)):
                return [cut(p, name, processor) for p in picture]
            if not isinstance(picture, PIL.Image.Image) or picture.size != image.size:
                raise InvalidInputError(f"with padding_mask_crop, {name} must be a PIL picture the size of image "
                                        f"({image.width}x{image.height}): it is cut like the image")
            return processor.resize(picture.crop(box), height, width, resize_mode="fill")

        people = arguments["identities"]
        inner = {
            **arguments, "image": cut(image, "image"), "mask_image": cut(mask_image, "mask_image", self.mask_processor),
            "control_image": cut(arguments["control_image"], "control_image"),
            "control_mask": cut(arguments["control_mask"], "control_mask", self.mask_processor),
            "identities": None if people is None else [
                dataclasses.replace(p, keypoints=cut(p.keypoints, "a person's keypoints"),
                                    mask=cut(p.mask, "a person's mask", self.mask_processor)) for p in people],
            "height": height, "width": width, "return_dict": True,
        }
        painted = self(**inner, **kwargs).images
        images = [self.image_processor.apply_overlay(mask_image, image, picture, box) for picture in painted]
        return StableDiffusionXLPipelineOutput(images=images) if arguments["return_dict"] else (images,)

    def _with_blend(
        self, state: CallState, image_latents: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor,
        timesteps: torch.Tensor,
    ) -> CallState:
        """``state`` whose step-end callback first puts the original back outside ``mask`` (4-channel UNet):
        the image's latents noised to the next timestep, or clean after the last one; then the user's."""
        user, wanted = state.callback_on_step_end, state.callback_inputs

        def blend(pipe: Any, i: int, t: torch.Tensor, tensors: dict[str, Any]) -> dict[str, Any]:
            original = image_latents
            if i < len(timesteps) - 1:
                original = self.scheduler.add_noise(image_latents, noise, timesteps[i + 1 : i + 2])
            latents = (1 - mask) * original + mask * tensors["latents"]
            if user is None:
                return {"latents": latents}
            out = user(pipe, i, t, {k: latents if k == "latents" else tensors[k] for k in wanted}) or {}
            return {"latents": latents, **out}

        return dataclasses.replace(state, callback_on_step_end=blend,
                                   callback_inputs=tuple(dict.fromkeys(("latents", *wanted))))


# ---- the variants of a loaded model --------------------------------------------------------------
_VARIANTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _variant(pipe: Any, cls: type) -> Any:
    """``cls`` sharing every module of ``pipe`` (no copy, no load); one per pipeline and class."""
    if isinstance(pipe, cls):
        return pipe
    variants = _VARIANTS.setdefault(pipe, {})
    if cls not in variants:
        # from_pipe casts the modules it only shares with .to(dtype), and diffusers then warns that modules
        # "should be kept in float32: []" (none): a library line a Python API user has no use for.
        level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()
        try:
            variant = cls.from_pipe(pipe)
        finally:
            diffusers_logging.set_verbosity(level)
        variant.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
        variants[cls] = variant
    return share_style_modules(variants[cls], pipe)


def inpaint_pipeline(pipe: Any) -> StableDiffusionXLInstantIDInpaintPipeline:
    """The inpainting variant of a loaded InstantID pipeline (same modules, same face adapter)."""
    return _variant(pipe, StableDiffusionXLInstantIDInpaintPipeline)


def img2img_pipeline(pipe: Any) -> StableDiffusionXLInstantIDImg2ImgPipeline:
    """The image-to-image variant of a loaded InstantID pipeline (same modules, same face adapter)."""
    return _variant(pipe, StableDiffusionXLInstantIDImg2ImgPipeline)


__all__ = ["StableDiffusionXLInstantIDInpaintPipeline", "img2img_pipeline", "inpaint_pipeline"]


def check_unet_fits(pipe: Any) -> None:
    """An SDXL inpainting base (a UNet reading 9 channels: latents, mask, masked picture) works only in the
    inpainting pipeline; in the others diffusers would stop inside the first step with a shape error."""
    inpainting = isinstance(pipe, StableDiffusionXLInstantIDInpaintPipeline)
    if pipe.unet.config.in_channels != INPAINT_UNET_CHANNELS or inpainting:
        return
    image_to_image = isinstance(pipe, StableDiffusionXLInstantIDImg2ImgPipeline)
    task = "redraw a whole picture (face detail)" if image_to_image else "make a picture from text"
    raise IncompatibleWeightsError(
        f"the base model is an SDXL inpainting model (9-channel UNet): it repaints masked parts and cannot {task}; "
        "use it with `instantid swap` (or instantid.pipelines.inpaint.inpaint_pipeline), "
        "or load a text-to-image SDXL base"
    )
