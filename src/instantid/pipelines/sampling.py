"""The sampling loop and decoding: one :func:`instantid.core.denoise.denoise_step` per timestep, then the VAE."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from diffusers.pipelines.stable_diffusion_xl.pipeline_output import StableDiffusionXLPipelineOutput

from instantid.core.attention import (
    FaceCall,
    FaceRegion,
    prepare_faces,
)
from instantid.core.denoise import StepInputs, denoise_step
from instantid.errors import InvalidInputError
from instantid.pipelines.call import CallRequest, CallState, Encoded


class SamplingMixin:
    """The loop every InstantID pipeline samples with, and its decoding."""

    def _call_state(
        self, req: CallRequest, enc: Encoded, images: tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]],
        add_time_ids: torch.Tensor, negative_time_ids: torch.Tensor, steps: int,
        timestep_cond: torch.Tensor | None, extra: dict[str, Any],
    ) -> CallState:
        """Freeze the call: text, time ids, face regions, images, strengths and guidance windows."""
        identity_images, control_images = images
        height, width = identity_images[0].shape[-2:]
        cfg = self.do_classifier_free_guidance
        # Rows follow the text's layout: every negative row, then every positive row.
        time_ids = add_time_ids.to(enc.device).repeat(enc.total, 1)
        if cfg:
            time_ids = torch.cat([negative_time_ids.to(enc.device).repeat(enc.total, 1), time_ids])
        masks = [self._face_mask_tensor(p.mask, height, width, enc.device, enc.dtype) for p in self._people(req)]
        faces = FaceCall(
            regions=tuple(FaceRegion(tokens, mask) for tokens, mask in zip(enc.tokens, masks, strict=True)),
            scale=req.ip_adapter_scale, cache={},
            style=self._style_call(req.style_image, req.style_scale, enc.total, enc.device),
        )
        # Every face layer's keys/values and region weights, once for the whole loop.
        faces = prepare_faces(self.unet, faces, (height // self.vae_scale_factor, width // self.vae_scale_factor))
        step = StepInputs(
            prompt_embeds=enc.prompt_embeds,
            added_cond={"text_embeds": enc.pooled, "time_ids": time_ids},
            faces=faces, identity_images=identity_images, control_images=control_images,
            guidance_scale=self.guidance_scale if cfg else None, guess_mode=enc.guess_mode,
            timestep_cond=timestep_cond, cross_attention_kwargs=req.cross_attention_kwargs,
            control_cache_interval=req.controlnet_cache_interval,
        )
        nets = self._nets()
        scales = req.controlnet_conditioning_scale
        scales = list(scales) if isinstance(scales, (list, tuple)) else [float(scales)] * len(nets)
        starts, ends = self._guidance_bounds(req)
        windows = tuple(
            tuple(1.0 - float(i / steps < s or (i + 1) / steps > e) for s, e in zip(starts, ends, strict=True))
            for i in range(steps)
        )
        return CallState(
            batch=enc.batch, total=enc.total, height=int(height), width=int(width), device=enc.device,
            dtype=enc.dtype, step=step, nets=tuple(nets), scales=tuple(scales), windows=windows,
            extra_step_kwargs=self.prepare_extra_step_kwargs(req.generator, req.eta),
            callback_on_step_end=req.callback_on_step_end,
            callback_inputs=tuple(req.callback_on_step_end_tensor_inputs),
            legacy_callback=extra.get("callback"), legacy_callback_steps=extra.get("callback_steps") or 1,
        )

    def _strength_timesteps(self, req: CallRequest, device: torch.device) -> torch.Tensor:
        """The repainting pipelines' timesteps: the schedule cut by ``strength``, as diffusers cuts it; a cut that
        leaves no step is one line naming the steps that would run one."""
        self.scheduler.set_timesteps(req.num_inference_steps, device=device)
        timesteps, _ = self.get_timesteps(req.num_inference_steps, req.strength, device)
        if len(timesteps) == 0:
            raise InvalidInputError(
                f"strength {req.strength} leaves no denoising step at {req.num_inference_steps} step(s): "
                f"give at least {math.ceil(1 / req.strength)} steps or a higher strength"
            )
        self._num_timesteps = len(timesteps)
        return timesteps

    def _denoise(self, state: CallState, latents: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The sampling loop shared by both pipelines: one :func:`denoise_step` per timestep."""
        step = state.step
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                scales = [c * k for c, k in zip(state.scales, state.windows[i], strict=True)]
                model_input = self.scheduler.scale_model_input(latents, t)
                noise_pred = denoise_step(self.unet, state.nets, model_input, t, step, scales)
                latents = self.scheduler.step(noise_pred, t, latents, **state.extra_step_kwargs, return_dict=False)[0]
                if state.callback_on_step_end is not None:
                    latents, step = self._step_end_callback(state, step, i, t, latents)
                if state.legacy_callback is not None and i % state.legacy_callback_steps == 0:
                    state.legacy_callback(i // getattr(self.scheduler, "order", 1), t, latents)
                progress.update()
        return latents

    def _callback_tensors(self, step: StepInputs, latents: torch.Tensor) -> dict[str, Any]:
        """The tensors diffusers' SDXL ControlNet pipelines hand to ``callback_on_step_end``, by name."""
        cfg = step.guidance_scale is not None
        time_ids, text, pooled = step.added_cond["time_ids"], step.prompt_embeds, step.added_cond["text_embeds"]
        images = list(step.identity_images) + list(step.control_images)
        image = images if len(images) > 1 else images[0]
        return {
            "latents": latents, "prompt_embeds": text, "add_text_embeds": pooled, "add_time_ids": time_ids,
            "negative_prompt_embeds": text.chunk(2)[0] if cfg else None,
            "negative_pooled_prompt_embeds": pooled.chunk(2)[0] if cfg else None,
            "negative_add_time_ids": time_ids.chunk(2)[0] if cfg else None,
            "add_neg_time_ids": time_ids.chunk(2)[0] if cfg else None,
            "image": image, "control_image": image,
        }

    def _step_end_callback(
        self, state: CallState, step: StepInputs, i: int, t: torch.Tensor, latents: torch.Tensor
    ) -> tuple[torch.Tensor, StepInputs]:
        """Call ``callback_on_step_end`` with the tensors named in ``callback_on_step_end_tensor_inputs``;
        what it returns replaces them for the following steps (latents, text, time ids, control images)."""
        available = self._callback_tensors(step, latents)
        out = state.callback_on_step_end(self, i, t, {k: available[k] for k in state.callback_inputs}) or {}
        added = dict(step.added_cond)
        added["text_embeds"] = out.get("add_text_embeds", added["text_embeds"])
        added["time_ids"] = out.get("add_time_ids", added["time_ids"])
        changes: dict[str, Any] = {"added_cond": added}
        if "prompt_embeds" in out:
            changes["prompt_embeds"] = out["prompt_embeds"]
        image = out.get("image", out.get("control_image"))
        if image is not None:
            images = list(image) if isinstance(image, (list, tuple)) else [image]
            count = len(step.identity_images)
            changes["identity_images"], changes["control_images"] = tuple(images[:count]), tuple(images[count:])
        return out.get("latents", latents), dataclasses.replace(step, **changes)

    def _finish(self, state: CallState, latents: torch.Tensor, timesteps: torch.Tensor, output_type: str,
                return_dict: bool) -> StableDiffusionXLPipelineOutput | tuple:
        latents = self._denoise(state, latents, timesteps)
        output = self._decode(latents, output_type)
        self.maybe_free_model_hooks()
        return StableDiffusionXLPipelineOutput(images=output) if return_dict else (output,)

    # Mirrors diffusers.pipelines.controlnet.pipeline_controlnet_sd_xl.StableDiffusionXLControlNetPipeline.__call__,
    # its decode block (upcast, latents_mean/std, watermark, postprocess), as of diffusers 0.42.1: compare on upgrade.
    def _decode(self, latents: torch.Tensor, output_type: str) -> Any:
        if output_type == "latent":
            return latents
        needs_upcast = self.vae.dtype == torch.float16 and self.vae.config.force_upcast
        if needs_upcast:
            # nn.Module.to: diffusers' ModelMixin.to warns "kept in float32: []" on every call.
            torch.nn.Module.to(self.vae, dtype=torch.float32)
            latents = latents.to(torch.float32)
        config = self.vae.config
        if getattr(config, "latents_mean", None) is not None and getattr(config, "latents_std", None) is not None:
            mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1).to(latents)
            std = torch.tensor(config.latents_std).view(1, -1, 1, 1).to(latents)
            latents = latents * std / config.scaling_factor + mean
        else:
            latents = latents / config.scaling_factor
        image = self.vae.decode(latents.to(self.vae.dtype), return_dict=False)[0]
        if needs_upcast:
            torch.nn.Module.to(self.vae, dtype=torch.float16)
        if self.watermark is not None:
            image = self.watermark.apply_watermark(image)
        return self.image_processor.postprocess(image, output_type=output_type)
