"""Checking a call before anything runs: every argument error is one line naming the argument."""

from __future__ import annotations

import warnings
from typing import Any

from instantid.errors import IncompatibleWeightsError, InvalidInputError
from instantid.pipelines.call import CallRequest, Person, check_pair


class CheckMixin:
    """Argument checks of the InstantID pipelines (diffusers' ``check_inputs`` plus what InstantID adds)."""

    def _guidance_bounds(self, req: CallRequest) -> tuple[list[float], list[float]]:
        """control_guidance_start/end as one value per ControlNet; a scalar beside a list is broadcast to it,
        as diffusers does (so ``start=0.0, end=[1.0, 0.75]`` works with two nets)."""
        start, end = req.control_guidance_start, req.control_guidance_end
        if not isinstance(start, (list, tuple)) and isinstance(end, (list, tuple)):
            start = [start] * len(end)
        elif isinstance(start, (list, tuple)) and not isinstance(end, (list, tuple)):
            end = [end] * len(start)
        elif not isinstance(start, (list, tuple)):
            start, end = [start] * len(self._nets()), [end] * len(self._nets())
        return [float(s) for s in start], [float(e) for e in end]

    # Mirrors diffusers.pipelines.controlnet.pipeline_controlnet_sd_xl.StableDiffusionXLControlNetPipeline
    # .check_inputs (prompt/embedding pairs, sizes, guidance windows, callback names), as of diffusers 0.42.1, with
    # InstantID's own checks added: compare on upgrade.
    def _check(self, req: CallRequest, extra: dict[str, Any]) -> None:
        """Precise errors for the arguments users get wrong, before anything expensive runs."""
        if self.unet.config.in_channels == 9 and not self.repaints_masked:
            # diffusers would stop inside the first UNet call with a shape error about 9 vs 4 channels.
            raise IncompatibleWeightsError(
                f"the UNet is an SDXL inpainting model (9 input channels): {type(self).__name__} cannot run it; "
                "use StableDiffusionXLInstantIDInpaintPipeline (instantid.pipelines.inpaint.inpaint_pipeline) or a "
                "text-to-image SDXL base"
            )
        nets = len(self._nets())
        if req.identities is None:
            if req.keypoints is None:
                raise InvalidInputError(
                    "the keypoint picture is required (image=, or control_image= for image-to-image)"
                )
            if nets > 1 and (not isinstance(req.keypoints, list) or len(req.keypoints) != nets):
                raise InvalidInputError(f"give one control image per ControlNet ({nets}), IdentityNet's first")
            if req.image_embeds is None:
                raise InvalidInputError("image_embeds (the face embedding) is required")
        else:
            self._check_identities(req, nets)
        if req.prompt is None and req.prompt_embeds is None:
            raise InvalidInputError("give prompt (text) or prompt_embeds (with pooled_prompt_embeds)")
        if req.prompt is not None and req.prompt_embeds is not None:
            raise InvalidInputError("give prompt or prompt_embeds, not both")
        if req.prompt is not None and not isinstance(req.prompt, (str, list)):
            raise InvalidInputError(f"prompt must be a string or a list of strings, got {type(req.prompt).__name__}")
        if req.prompt_2 is not None and req.prompt_embeds is not None:
            raise InvalidInputError("give prompt_2 or prompt_embeds, not both")
        if req.negative_prompt is not None and req.negative_prompt_embeds is not None:
            raise InvalidInputError("give negative_prompt or negative_prompt_embeds, not both")
        if req.prompt_embeds is not None and req.pooled_prompt_embeds is None:
            raise InvalidInputError("prompt_embeds needs pooled_prompt_embeds (both come from encode_prompt)")
        if req.negative_prompt_embeds is not None and req.negative_pooled_prompt_embeds is None:
            raise InvalidInputError(
                "negative_prompt_embeds needs negative_pooled_prompt_embeds (both come from encode_prompt)"
            )
        if (
            req.prompt_embeds is not None and req.negative_prompt_embeds is not None
            and req.prompt_embeds.shape != req.negative_prompt_embeds.shape
        ):
            raise InvalidInputError(
                f"prompt_embeds {tuple(req.prompt_embeds.shape)} and negative_prompt_embeds "
                f"{tuple(req.negative_prompt_embeds.shape)} must have the same shape"
            )
        for name in ("original_size", "crops_coords_top_left", "target_size", "negative_original_size",
                     "negative_crops_coords_top_left", "negative_target_size"):
            check_pair(name, getattr(req, name))
        for name, value in (("height", req.height), ("width", req.width)):
            if value is not None and (value <= 0 or value % 8):
                raise InvalidInputError(f"{name} must be a positive multiple of 8, got {value}")
        if req.num_inference_steps < 1:
            raise InvalidInputError(f"num_inference_steps must be >= 1, got {req.num_inference_steps}")
        if req.guidance_scale < 0:
            raise InvalidInputError(f"guidance_scale must be >= 0, got {req.guidance_scale}")
        if req.num_images_per_prompt < 1:
            raise InvalidInputError(f"num_images_per_prompt must be >= 1, got {req.num_images_per_prompt}")
        scales = req.controlnet_conditioning_scale
        scales = scales if isinstance(scales, (list, tuple)) else [scales]
        if any(s < 0 for s in scales) or (req.ip_adapter_scale is not None and req.ip_adapter_scale < 0):
            raise InvalidInputError("strengths (controlnet_conditioning_scale, ip_adapter_scale) must be >= 0")
        if isinstance(req.controlnet_conditioning_scale, (list, tuple)) and len(scales) != nets:
            raise InvalidInputError(f"give one controlnet_conditioning_scale per ControlNet ({nets})")
        starts, ends = self._guidance_bounds(req)
        if len(starts) != len(ends) or len(starts) != nets:
            raise InvalidInputError(f"give one control_guidance_start/end per ControlNet ({nets}) or one value")
        if any(not 0 <= s < e <= 1 for s, e in zip(starts, ends, strict=True)):
            raise InvalidInputError("control_guidance_start/end must satisfy 0 <= start < end <= 1")
        interval = req.controlnet_cache_interval
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise InvalidInputError(
                f"controlnet_cache_interval must be an integer >= 1 (1 = every step, exact), got {interval!r}"
            )
        if req.output_type not in ("pil", "np", "pt", "latent"):
            raise InvalidInputError(f"output_type must be pil, np, pt or latent, got {req.output_type!r}")
        self._check_style(req.style_image, req.style_scale)
        unknown = [k for k in req.callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise InvalidInputError(
                f"callback_on_step_end_tensor_inputs {unknown} are not available; choose from "
                f"{self._callback_tensor_inputs}"
            )
        ignored = sorted(set(extra) - {"callback", "callback_steps"})
        if ignored:
            warnings.warn(f"{type(self).__name__} ignores the arguments {ignored}", UserWarning, stacklevel=3)
        if extra.get("callback") is not None:
            steps = extra.get("callback_steps")
            if not isinstance(steps, int) or steps < 1:
                raise InvalidInputError(f"callback_steps must be a positive integer, got {steps!r}")
            warnings.warn("callback is deprecated: use callback_on_step_end", FutureWarning, stacklevel=3)

    @staticmethod
    def _check_identities(req: CallRequest, nets: int) -> None:
        if req.image_embeds is not None or req.control_mask is not None or req.image_embeds_weights is not None:
            raise InvalidInputError(
                "with identities=[...] give each person's embedding and mask in its Person, not "
                "image_embeds / image_embeds_weights / control_mask"
            )
        people = list(req.identities)
        if not people or not all(isinstance(p, Person) for p in people):
            raise InvalidInputError("identities must be a non-empty list of instantid.pipelines.sdxl.Person")
        if any(p.keypoints is None for p in people):
            raise InvalidInputError("every Person needs its keypoint picture (keypoints)")
        if len(people) > 1 and any(p.mask is None for p in people):
            raise InvalidInputError("with several people give each Person a region mask")
        extra = [] if req.keypoints is None else req.keypoints
        if nets == 1 and req.keypoints is not None:
            raise InvalidInputError(
                "with identities=[...] the keypoint pictures go in each Person, not in image / control_image"
            )
        if nets > 1 and (not isinstance(extra, list) or len(extra) != nets - 1):
            raise InvalidInputError(
                f"with identities=[...] give one control image per extra ControlNet ({nets - 1}) as image"
            )
