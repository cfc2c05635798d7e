"""InstantID pipelines for SDXL: text-to-image and image-to-image, drop-in for the published ones.

Both are diffusers ControlNet pipelines plus what InstantID adds (see ``docs`` in the README):

* a face adapter (Resampler + decoupled cross-attention) loaded by :meth:`load_ip_adapter_instantid`; the
  Resampler lives in ``unet.encoder_hid_proj`` as any diffusers IP-Adapter does, so offload and ``.to()`` see it;
* IdentityNet, the first ControlNet, reads the 16 face tokens instead of the text;
* an optional face-region mask that confines IdentityNet and the image branch to the face.

Deliberate differences from the published code (its known defects): several reference embeddings are
averaged into one identity instead of becoming extra Resampler inputs; ``ip_adapter_scale`` is honoured by
every variant; guess mode works with guidance; the face mask never outlives the call; several prompts work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import (
    ControlNetModel,
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLControlNetPipeline,
)
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from diffusers.pipelines.stable_diffusion_xl.pipeline_output import StableDiffusionXLPipelineOutput
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import retrieve_timesteps

from instantid.adapter import (
    AdapterSpec,
    check_fits_unet,
    inspect_adapter,
    install_face_adapter,
    load_adapter_state_dict,
)
from instantid.attention import FaceAttnProcessor, face_processors, face_region
from instantid.errors import EmbeddingSpaceError, InvalidInputError

EmbeddingInput = np.ndarray | torch.Tensor | Sequence[float] | Sequence[Sequence[float]]


def average_embeddings(image_embeds: EmbeddingInput, weights: Sequence[float] | None = None) -> torch.Tensor:
    """One identity from one or several reference embeddings: (E,) or (N, E) -> (1, E), weighted mean."""
    emb = torch.as_tensor(np.asarray(image_embeds) if not torch.is_tensor(image_embeds) else image_embeds)
    emb = emb.detach().to(torch.float32)
    if emb.ndim == 1:
        emb = emb[None]
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise InvalidInputError(f"image_embeds must have shape (E,) or (N, E), got {tuple(emb.shape)}")
    if not torch.isfinite(emb).all():
        raise InvalidInputError("image_embeds contains NaN or infinite values")
    if weights is None:
        return emb.mean(dim=0, keepdim=True)
    w = torch.as_tensor(weights, dtype=torch.float32).reshape(-1)
    if w.shape[0] != emb.shape[0] or (w < 0).any() or w.sum() <= 0:
        raise InvalidInputError(
            f"need one non-negative weight per reference embedding ({emb.shape[0]}), with a positive sum"
        )
    return (w[:, None] * emb).sum(dim=0, keepdim=True) / w.sum()


@dataclass(frozen=True)
class _Encoded:
    """What one call has encoded: sizes, text embeddings (negative half first under guidance), face inputs."""

    batch: int  # prompts
    total: int  # prompts x images per prompt
    device: torch.device
    dtype: torch.dtype
    guess_mode: bool
    prompt_embeds: torch.Tensor  # (B', 77, D)
    pooled: torch.Tensor  # (B', P)
    face_embeds: list[torch.Tensor]  # [(B', 1, 1, E)] for the UNet's image projection
    face_tokens: torch.Tensor  # (B', Q, D) for IdentityNet
    projection_dim: int


class InstantIDMixin:
    """What InstantID adds to a diffusers SDXL ControlNet pipeline."""

    adapter_spec: AdapterSpec | None = None

    # ---- loading -------------------------------------------------------------------------------
    def load_ip_adapter_instantid(
        self, model_ckpt: str | Path, image_emb_dim: int | None = None, num_tokens: int | None = None,
        scale: float = 0.5,
    ) -> AdapterSpec:
        """Load a face adapter (``ip-adapter.bin`` or ``.safetensors``, published layout).

        ``image_emb_dim`` and ``num_tokens`` are accepted for compatibility and checked against the file;
        every size is read from the checkpoint itself.
        """
        state, metadata = load_adapter_state_dict(model_ckpt)
        spec = inspect_adapter(state, str(model_ckpt), metadata)
        for name, wanted, found in (
            ("image_emb_dim", image_emb_dim, spec.embedding_dim),
            ("num_tokens", num_tokens, spec.num_queries),
        ):
            if wanted is not None and wanted != found:
                raise InvalidInputError(f"{name}={wanted} was asked for but {model_ckpt} has {found}")
        check_fits_unet(state, spec, self.unet, str(model_ckpt))
        install_face_adapter(self.unet, state, scale)
        self.adapter_spec = spec
        return spec

    def _require_adapter(self) -> AdapterSpec:
        if self.adapter_spec is None or not face_processors(self.unet):
            raise InvalidInputError(
                "no face adapter loaded (or it was replaced): call load_ip_adapter_instantid(path) first"
            )
        return self.adapter_spec

    @property
    def identitynet(self) -> ControlNetModel:
        """IdentityNet: the ControlNet, or the first one of a MultiControlNet."""
        cn = self.controlnet
        return cn.nets[0] if isinstance(cn, MultiControlNetModel) else cn

    def _keep_face_layers(self, change: Callable[[], None]) -> None:
        """Run a diffusers attention switch without losing the identity branch.

        diffusers' xformers and slicing switches replace every attention processor, which silently drops
        the face adapter (a known defect of the published pipeline). The face layers already use
        ``scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU), so they are put back.
        """
        keep = {name: p for name, p in self.unet.attn_processors.items() if isinstance(p, FaceAttnProcessor)}
        change()
        if keep:
            processors = dict(self.unet.attn_processors)
            processors.update(keep)
            self.unet.set_attn_processor(processors)

    def enable_xformers_memory_efficient_attention(self, attention_op: Callable | None = None) -> None:
        parent = super()
        self._keep_face_layers(lambda: parent.enable_xformers_memory_efficient_attention(attention_op))

    def enable_attention_slicing(self, slice_size: str | int | None = "auto") -> None:
        parent = super()
        self._keep_face_layers(lambda: parent.enable_attention_slicing(slice_size))

    # ---- conditioning --------------------------------------------------------------------------
    def _face_conditioning(
        self, image_embeds: EmbeddingInput, weights: Sequence[float] | None, batch: int, cfg: bool,
        device: torch.device, dtype: torch.dtype,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Face embeddings for the UNet's image projection and the face tokens for IdentityNet.

        Returns ``([embeds (B', 1, 1, E)], tokens (B', Q, D))`` with ``B' = 2 * batch`` under guidance, where
        the negative half is the Resampler applied to a zero embedding, as published.
        """
        spec = self._require_adapter()
        emb = average_embeddings(image_embeds, weights)
        if emb.shape[1] != spec.embedding_dim:
            space = f" ({spec.embedding_space})" if spec.embedding_space else ""
            raise EmbeddingSpaceError(
                f"face embedding has {emb.shape[1]} values but the face adapter expects {spec.embedding_dim}"
                f"{space}: use the face model the adapter was trained with"
            )
        emb = emb.to(device=device, dtype=dtype).reshape(1, 1, 1, -1).repeat(batch, 1, 1, 1)
        if cfg:
            emb = torch.cat([torch.zeros_like(emb), emb])
        resampler = self.unet.encoder_hid_proj.image_projection_layers[0]
        param = next(resampler.parameters())
        # Under CPU offload the UNet (and so the Resampler) may sit elsewhere than the execution device.
        run_on = device if param.device.type == "meta" else param.device
        tokens = resampler(emb[:, 0].to(run_on, param.dtype if param.device.type != "meta" else dtype))
        return [emb], tokens.to(device=device, dtype=dtype)

    @staticmethod
    def _face_mask_tensor(
        control_mask: PIL.Image.Image | np.ndarray | torch.Tensor | None, height: int, width: int,
        device: torch.device, dtype: torch.dtype,
    ) -> torch.Tensor | None:
        """The face-region mask as an (H, W) tensor in [0, 1] (first channel / 255, as published)."""
        if control_mask is None:
            return None
        if isinstance(control_mask, torch.Tensor):
            mask = control_mask.detach().float()
            mask = mask[0] if mask.ndim == 3 else mask
        else:
            image = control_mask if isinstance(control_mask, PIL.Image.Image) else PIL.Image.fromarray(
                np.asarray(control_mask).astype(np.uint8)
            )
            if image.size != (width, height):
                image = image.resize((width, height), PIL.Image.NEAREST)
            mask = torch.from_numpy(np.array(image.convert("RGB"))[:, :, 0].astype(np.float32)) / 255.0
        if tuple(mask.shape) != (height, width):
            raise InvalidInputError(f"control_mask is {tuple(mask.shape)}, expected ({height}, {width})")
        return mask.to(device=device, dtype=dtype)

    def _check_call(
        self, prompt: str | list[str] | None, image: Any, height: int | None, width: int | None,
        num_inference_steps: int, guidance_scale: float, num_images_per_prompt: int,
        controlnet_conditioning_scale: float | list[float], ip_adapter_scale: float | None,
        control_guidance_start: float | list[float], control_guidance_end: float | list[float],
        output_type: str,
    ) -> None:
        """Precise errors for the arguments InstantID users get wrong most often."""
        if image is None:
            raise InvalidInputError("image (the keypoint picture) is required")
        nets = len(self.controlnet.nets) if isinstance(self.controlnet, MultiControlNetModel) else 1
        if nets > 1 and (not isinstance(image, list) or len(image) != nets):
            raise InvalidInputError(f"give one control image per ControlNet ({nets}), IdentityNet's first")
        if prompt is not None and not isinstance(prompt, (str, list)):
            raise InvalidInputError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")
        for name, value in (("height", height), ("width", width)):
            if value is not None and (value <= 0 or value % 8):
                raise InvalidInputError(f"{name} must be a positive multiple of 8, got {value}")
        if num_inference_steps < 1:
            raise InvalidInputError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if guidance_scale < 0:
            raise InvalidInputError(f"guidance_scale must be >= 0, got {guidance_scale}")
        if num_images_per_prompt < 1:
            raise InvalidInputError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt}")
        scales = controlnet_conditioning_scale
        scales = scales if isinstance(scales, (list, tuple)) else [scales]
        if any(s < 0 for s in scales) or (ip_adapter_scale is not None and ip_adapter_scale < 0):
            raise InvalidInputError("strengths (controlnet_conditioning_scale, ip_adapter_scale) must be >= 0")
        starts = control_guidance_start if isinstance(control_guidance_start, list) else [control_guidance_start]
        ends = control_guidance_end if isinstance(control_guidance_end, list) else [control_guidance_end]
        if len(starts) != len(ends) or any(not 0 <= s < e <= 1 for s, e in zip(starts, ends, strict=True)):
            raise InvalidInputError("control_guidance_start/end must satisfy 0 <= start < end <= 1")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise InvalidInputError(f"output_type must be pil, np, pt or latent, got {output_type!r}")

    def _guidance_windows(
        self, start: float | list[float], end: float | list[float], steps: int
    ) -> list[list[float]]:
        """Per step, per ControlNet: 1.0 while that net is active, else 0.0 (diffusers' rule)."""
        nets = len(self.controlnet.nets) if isinstance(self.controlnet, MultiControlNetModel) else 1
        starts = start if isinstance(start, list) else [start] * nets
        ends = end if isinstance(end, list) else [end] * nets
        return [
            [1.0 - float(i / steps < s or (i + 1) / steps > e) for s, e in zip(starts, ends, strict=True)]
            for i in range(steps)
        ]

    def _encode(
        self, prompt: str | list[str] | None, prompt_2: str | list[str] | None, negative_prompt: Any,
        negative_prompt_2: Any, num_images_per_prompt: int, image_embeds: EmbeddingInput | None,
        weights: Sequence[float] | None, guidance_scale: float, ip_adapter_scale: float | None, guess_mode: bool,
        clip_skip: int | None, cross_attention_kwargs: dict[str, Any] | None,
    ) -> _Encoded:
        """Per-call state, the text embeddings and the face conditioning: what both pipelines share."""
        if image_embeds is None:
            raise InvalidInputError("image_embeds (the face embedding) is required")
        if ip_adapter_scale is not None:
            self.set_ip_adapter_scale(ip_adapter_scale)
        self._guidance_scale = guidance_scale
        self._clip_skip = clip_skip
        self._cross_attention_kwargs = cross_attention_kwargs
        self._interrupt = False
        batch = 1 if prompt is None or isinstance(prompt, str) else len(prompt)
        device = self._execution_device
        cfg = self.do_classifier_free_guidance
        text, negative, pooled, negative_pooled = self.encode_prompt(
            prompt, prompt_2, device, num_images_per_prompt, cfg, negative_prompt, negative_prompt_2,
            lora_scale=(cross_attention_kwargs or {}).get("scale"), clip_skip=clip_skip,
        )
        total = batch * num_images_per_prompt
        face_embeds, face_tokens = self._face_conditioning(image_embeds, weights, total, cfg, device, text.dtype)
        if cfg:
            text, pooled = torch.cat([negative, text]), torch.cat([negative_pooled, pooled])
        return _Encoded(
            batch=batch, total=total, device=device, dtype=text.dtype,
            guess_mode=guess_mode or self.identitynet.config.global_pool_conditions,
            prompt_embeds=text.to(device), pooled=pooled.to(device), face_embeds=face_embeds,
            face_tokens=face_tokens,
            projection_dim=self.text_encoder_2.config.projection_dim
            if self.text_encoder_2 is not None else int(pooled.shape[-1]),
        )

    def _denoise_and_decode(
        self, enc: _Encoded, latents: torch.Tensor, timesteps: torch.Tensor, images: list[torch.Tensor],
        face_mask: torch.Tensor | None, add_time_ids: torch.Tensor, negative_time_ids: torch.Tensor,
        controlnet_conditioning_scale: float | list[float], control_guidance_start: float | list[float],
        control_guidance_end: float | list[float], generator: Any, eta: float, timestep_cond: torch.Tensor | None,
        callback_on_step_end: Callable | None, output_type: str, return_dict: bool,
    ) -> StableDiffusionXLPipelineOutput | tuple:
        if self.do_classifier_free_guidance:
            add_time_ids = torch.cat([negative_time_ids, add_time_ids])
        added_cond = {"text_embeds": enc.pooled, "time_ids": add_time_ids.to(enc.device).repeat(enc.total, 1)}
        latents = self._denoise(
            latents, timesteps, prompt_embeds=enc.prompt_embeds, added_cond=added_cond,
            face_embeds=enc.face_embeds, face_tokens=enc.face_tokens, images=images,
            conditioning_scales=self._conditioning_scales(controlnet_conditioning_scale),
            windows=self._guidance_windows(control_guidance_start, control_guidance_end, len(timesteps)),
            guidance_scale=self.guidance_scale, guess_mode=enc.guess_mode, face_mask=face_mask,
            extra_step_kwargs=self.prepare_extra_step_kwargs(generator, eta), timestep_cond=timestep_cond,
            callback_on_step_end=callback_on_step_end,
        )
        output = self._decode(latents, output_type)
        self.maybe_free_model_hooks()
        return StableDiffusionXLPipelineOutput(images=output) if return_dict else (output,)

    # ---- denoising -----------------------------------------------------------------------------
    def _control_residuals(
        self, sample: torch.Tensor, t: torch.Tensor, images: list[torch.Tensor], face_tokens: torch.Tensor,
        prompt_embeds: torch.Tensor, added_cond: dict[str, torch.Tensor], scales: list[float],
        guess_mode: bool, face_mask: torch.Tensor | None,
    ) -> tuple[list[torch.Tensor] | None, torch.Tensor | None]:
        """Sum of all ControlNets' residuals; IdentityNet reads face tokens, the others the text."""
        nets = self.controlnet.nets if isinstance(self.controlnet, MultiControlNetModel) else [self.controlnet]
        down_sum: list[torch.Tensor] | None = None
        mid_sum: torch.Tensor | None = None
        for index, (net, image, scale) in enumerate(zip(nets, images, scales, strict=True)):
            if scale == 0:
                continue  # outside its guidance window: contributes exactly zero
            down, mid = net(
                sample, t,
                encoder_hidden_states=face_tokens if index == 0 else prompt_embeds,
                controlnet_cond=image, conditioning_scale=scale, guess_mode=guess_mode,
                added_cond_kwargs=added_cond, return_dict=False,
            )
            if index == 0 and face_mask is not None:
                mask = face_mask[None, None]
                down = [d * F.interpolate(mask, d.shape[-2:], mode="bilinear").to(d) for d in down]
                mid = mid * F.interpolate(mask, down[-1].shape[-2:], mode="bilinear").to(mid)
            if down_sum is None:
                down_sum, mid_sum = list(down), mid
            else:
                down_sum = [a + b for a, b in zip(down_sum, down, strict=True)]
                mid_sum = mid_sum + mid
        return down_sum, mid_sum

    def _denoise(
        self, latents: torch.Tensor, timesteps: torch.Tensor, *, prompt_embeds: torch.Tensor,
        added_cond: dict[str, torch.Tensor], face_embeds: list[torch.Tensor], face_tokens: torch.Tensor,
        images: list[torch.Tensor], conditioning_scales: list[float], windows: list[list[float]],
        guidance_scale: float, guess_mode: bool, face_mask: torch.Tensor | None,
        extra_step_kwargs: dict[str, Any], timestep_cond: torch.Tensor | None,
        callback_on_step_end: Callable | None,
    ) -> torch.Tensor:
        """The sampling loop shared by both pipelines."""
        cfg = self.do_classifier_free_guidance
        unet_cond = {**added_cond, "image_embeds": face_embeds}
        if guess_mode and cfg:
            # Control only the conditional half; the unconditional half gets zero residuals.
            control_cond = {k: v.chunk(2)[1] for k, v in added_cond.items()}
            control_tokens, control_text = face_tokens.chunk(2)[1], prompt_embeds.chunk(2)[1]
        else:
            control_cond, control_tokens, control_text = added_cond, face_tokens, prompt_embeds
        # The UNet's half of the batch always gets the full face tokens (guess mode only trims IdentityNet's).
        with face_region(self.unet, face_mask, face_tokens), self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                model_input = torch.cat([latents] * 2) if cfg else latents
                model_input = self.scheduler.scale_model_input(model_input, t)
                control_input = model_input
                if guess_mode and cfg:
                    control_input = self.scheduler.scale_model_input(latents, t)
                scales = [c * k for c, k in zip(conditioning_scales, windows[i], strict=True)]
                down, mid = self._control_residuals(
                    control_input, t, images, control_tokens, control_text, control_cond, scales,
                    guess_mode, face_mask,
                )
                if down is not None and guess_mode and cfg:
                    down = [torch.cat([torch.zeros_like(d), d]) for d in down]
                    mid = torch.cat([torch.zeros_like(mid), mid])
                noise_pred = self.unet(
                    model_input, t,
                    encoder_hidden_states=prompt_embeds, timestep_cond=timestep_cond,
                    cross_attention_kwargs=self.cross_attention_kwargs,
                    down_block_additional_residuals=down, mid_block_additional_residual=mid,
                    added_cond_kwargs=unet_cond, return_dict=False,
                )[0]
                if cfg:
                    uncond, cond = noise_pred.chunk(2)
                    noise_pred = uncond + guidance_scale * (cond - uncond)
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]
                if callback_on_step_end is not None:
                    out = callback_on_step_end(self, i, t, {"latents": latents}) or {}
                    latents = out.get("latents", latents)
                progress.update()
        return latents

    def _decode(self, latents: torch.Tensor, output_type: str) -> Any:
        if output_type == "latent":
            return latents
        needs_upcast = self.vae.dtype == torch.float16 and self.vae.config.force_upcast
        if needs_upcast:
            self.vae.to(dtype=torch.float32)
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
            self.vae.to(dtype=torch.float16)
        if self.watermark is not None:
            image = self.watermark.apply_watermark(image)
        return self.image_processor.postprocess(image, output_type=output_type)

    def _prepare_control_images(
        self, image: Any, width: int | None, height: int | None, batch: int, num_images_per_prompt: int,
        device: torch.device, guess_mode: bool,
    ) -> list[torch.Tensor]:
        images = image if isinstance(self.controlnet, MultiControlNetModel) else [image]
        # diffusers names the same helper differently in its text-to-image and image-to-image pipelines.
        prepare = self.prepare_control_image if hasattr(self, "prepare_control_image") else self.prepare_image
        return [
            prepare(
                image=img, width=width, height=height, batch_size=batch, num_images_per_prompt=num_images_per_prompt,
                device=device, dtype=self.identitynet.dtype,
                do_classifier_free_guidance=self.do_classifier_free_guidance, guess_mode=guess_mode,
            )
            for img in images
        ]

    def _conditioning_scales(self, scale: float | list[float]) -> list[float]:
        nets = len(self.controlnet.nets) if isinstance(self.controlnet, MultiControlNetModel) else 1
        scales = list(scale) if isinstance(scale, (list, tuple)) else [float(scale)] * nets
        if len(scales) != nets:
            raise InvalidInputError(f"give one controlnet_conditioning_scale per ControlNet ({nets})")
        return scales


class StableDiffusionXLInstantIDPipeline(InstantIDMixin, StableDiffusionXLControlNetPipeline):
    """InstantID text-to-image for SDXL (drop-in for the published ``StableDiffusionXLInstantIDPipeline``)."""

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        image: Any = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        image_embeds: EmbeddingInput | None = None,
        image_embeds_weights: Sequence[float] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        controlnet_conditioning_scale: float | list[float] = 1.0,
        ip_adapter_scale: float | None = None,
        guess_mode: bool = False,
        control_guidance_start: float | list[float] = 0.0,
        control_guidance_end: float | list[float] = 1.0,
        control_mask: PIL.Image.Image | np.ndarray | torch.Tensor | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
    ) -> StableDiffusionXLPipelineOutput | tuple:
        """Generate images of the person whose embedding is ``image_embeds``, posed by the keypoint
        picture ``image`` (see :func:`instantid.draw_kps`)."""
        # 1. Check inputs.
        self._check_call(
            prompt, image, height, width, num_inference_steps, guidance_scale, num_images_per_prompt,
            controlnet_conditioning_scale, ip_adapter_scale, control_guidance_start, control_guidance_end,
            output_type,
        )

        # 2. Encode the prompt (text) and the face (embedding -> tokens).
        enc = self._encode(
            prompt, prompt_2, negative_prompt, negative_prompt_2, num_images_per_prompt, image_embeds,
            image_embeds_weights, guidance_scale, ip_adapter_scale, guess_mode, clip_skip, cross_attention_kwargs,
        )
        device, total = enc.device, enc.total

        # 3. Prepare the control images (keypoint picture first); output size defaults to theirs.
        images = self._prepare_control_images(
            image, width, height, total, num_images_per_prompt, device, enc.guess_mode
        )
        height, width = images[0].shape[-2:]
        face_mask = self._face_mask_tensor(control_mask, height, width, device, enc.dtype)

        # 4. Timesteps and initial noise.
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device)
        self._num_timesteps = len(timesteps)
        latents = self.prepare_latents(
            total, self.unet.config.in_channels, height, width, enc.dtype, device, generator, latents
        )
        timestep_cond = None
        if self.unet.config.time_cond_proj_dim is not None:
            scale = torch.tensor(guidance_scale - 1).repeat(total)
            timestep_cond = self.get_guidance_scale_embedding(
                scale, embedding_dim=self.unet.config.time_cond_proj_dim
            ).to(device=device, dtype=latents.dtype)

        # 5. SDXL micro-conditioning (sizes).
        add_time_ids = self._get_add_time_ids(
            (height, width), (0, 0), (height, width), dtype=enc.dtype,
            text_encoder_projection_dim=enc.projection_dim,
        )

        # 6. Denoise, 7. decode.
        return self._denoise_and_decode(
            enc, latents, timesteps, images, face_mask, add_time_ids, add_time_ids, controlnet_conditioning_scale,
            control_guidance_start, control_guidance_end, generator, eta, timestep_cond, callback_on_step_end,
            output_type, return_dict,
        )


class StableDiffusionXLInstantIDImg2ImgPipeline(InstantIDMixin, StableDiffusionXLControlNetImg2ImgPipeline):
    """InstantID image-to-image: start from ``image`` (noised to ``strength``), pose from ``control_image``."""

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        image: Any = None,
        control_image: Any = None,
        height: int | None = None,
        width: int | None = None,
        strength: float = 0.8,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        image_embeds: EmbeddingInput | None = None,
        image_embeds_weights: Sequence[float] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        controlnet_conditioning_scale: float | list[float] = 0.8,
        ip_adapter_scale: float | None = None,
        guess_mode: bool = False,
        control_guidance_start: float | list[float] = 0.0,
        control_guidance_end: float | list[float] = 1.0,
        control_mask: PIL.Image.Image | np.ndarray | torch.Tensor | None = None,
        aesthetic_score: float = 6.0,
        negative_aesthetic_score: float = 2.5,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
    ) -> StableDiffusionXLPipelineOutput | tuple:
        """Repaint ``image`` as the person of ``image_embeds`` posed by ``control_image`` (keypoints)."""
        # 1. Check inputs.
        self._check_call(
            prompt, control_image, height, width, num_inference_steps, guidance_scale, num_images_per_prompt,
            controlnet_conditioning_scale, ip_adapter_scale, control_guidance_start, control_guidance_end,
            output_type,
        )
        if image is None:
            raise InvalidInputError("image (the init image) is required")
        if not 0 < strength <= 1:
            raise InvalidInputError(f"strength must be in (0, 1], got {strength}")

        # 2. Encode the prompt and the face.
        enc = self._encode(
            prompt, prompt_2, negative_prompt, negative_prompt_2, num_images_per_prompt, image_embeds,
            image_embeds_weights, guidance_scale, ip_adapter_scale, guess_mode, clip_skip, cross_attention_kwargs,
        )
        device, total = enc.device, enc.total

        # 3. Control images decide the size; the init image is resized to it.
        images = self._prepare_control_images(
            control_image, width, height, total, num_images_per_prompt, device, enc.guess_mode
        )
        height, width = images[0].shape[-2:]
        face_mask = self._face_mask_tensor(control_mask, height, width, device, enc.dtype)
        init = self.image_processor.preprocess(image, height=height, width=width).to(torch.float32)

        # 4. Timesteps cut by strength, and the noised init latents.
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps, num_inference_steps = self.get_timesteps(num_inference_steps, strength, device)
        if len(timesteps) == 0:
            raise InvalidInputError(f"strength {strength} leaves no denoising step at {num_inference_steps} steps")
        self._num_timesteps = len(timesteps)
        latents = self.prepare_latents(
            init, timesteps[:1].repeat(total), enc.batch, num_images_per_prompt, enc.dtype, device, generator, True,
        )

        # 5. SDXL micro-conditioning (sizes and aesthetic scores).
        add_time_ids, negative_time_ids = self._get_add_time_ids(
            (height, width), (0, 0), (height, width), aesthetic_score, negative_aesthetic_score,
            (height, width), (0, 0), (height, width), dtype=enc.dtype, text_encoder_projection_dim=enc.projection_dim,
        )

        # 6. Denoise, 7. decode.
        return self._denoise_and_decode(
            enc, latents, timesteps, images, face_mask, add_time_ids, negative_time_ids,
            controlnet_conditioning_scale, control_guidance_start, control_guidance_end, generator, eta, None,
            callback_on_step_end, output_type, return_dict,
        )
