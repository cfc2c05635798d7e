"""InstantID pipelines for SDXL: text-to-image and image-to-image, drop-in for the published ones.

Both are diffusers ControlNet pipelines plus what InstantID adds (paper section 3):

* a face adapter (Resampler + decoupled cross-attention) loaded by :meth:`load_ip_adapter_instantid` through
  diffusers' ``load_ip_adapter``; the Resampler lives in ``unet.encoder_hid_proj`` as in any diffusers
  IP-Adapter, so offload and ``.to()`` see it;
* IdentityNet, the first ControlNet, reads the 16 face tokens instead of the text;
* an optional face-region mask that confines IdentityNet and the image branch to the face;
* several people in one picture (``identities=[Person(...), ...]``): each identity's tokens and IdentityNet
  residuals act only inside its own region.

Every call is read into one frozen :class:`CallState` before the loop; one step is
:func:`instantid.core.denoise.denoise_step`, the function the trainer also runs. The face state of a call (face
tokens, face mask, adapter scale) travels with it and is never stored on the attention processors. The shared
modules are not untouched, though: the inpainting variant hooks the UNet for its call and
:meth:`InstantID.run_pipeline <instantid.api.generator.InstantID.run_pipeline>` sets the call's sampler on the
pipeline; both are undone when the call ends, and the model's lock (``InstantID._lock``) lets one call at a time
do so. Pipelines that share modules (``from_pipe``) must therefore not run at once outside that lock.

Deliberate differences from the published code (its known defects): several reference embeddings are
averaged into one identity instead of becoming extra Resampler inputs; ``ip_adapter_scale`` is honoured by
every variant and applies to that call only; guess mode works with guidance; the face mask never outlives
the call; several prompts work; with extra ControlNets only IdentityNet reads the face tokens (as the
published ``_full`` pipeline does; its basic pipeline feeds them to every net).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLControlNetPipeline,
)
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from diffusers.pipelines.stable_diffusion_xl.pipeline_output import StableDiffusionXLPipelineOutput
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import retrieve_timesteps
from diffusers.utils import logging as diffusers_logging

from instantid.core.adapter import AdapterSpec, check_fits_unet, inspect_adapter, load_adapter_state_dict
from instantid.core.attention import (
    FaceAttnProcessor,
    FaceTokenProjection,
    adopt_face_layers,
    face_processors,
)
from instantid.errors import InvalidInputError
from instantid.pipelines.call import (
    IMAGE_TO_IMAGE,
    TEXT_TO_IMAGE,
    CallRequest,
    check_strength,
    instantid_call,
    size_or,
)
from instantid.pipelines.checks import CheckMixin
from instantid.pipelines.control import ControlMixin
from instantid.pipelines.encoding import EncodeMixin
from instantid.pipelines.sampling import SamplingMixin
from instantid.pipelines.style import StyleMixin


def controlnets(pipe: Any) -> list[torch.nn.Module]:
    """IdentityNet and any further ControlNets of ``pipe`` (ours or any diffusers ControlNet pipeline)."""
    net = getattr(pipe, "controlnet", None)
    if net is None:
        return []
    return list(net.nets) if isinstance(net, MultiControlNetModel) else [net]


class InstantIDMixin(StyleMixin, CheckMixin, EncodeMixin, ControlMixin, SamplingMixin):
    """What InstantID adds to a diffusers SDXL ControlNet pipeline (and a style reference: StyleMixin)."""

    repaints_masked = False  # True for the inpainting pipeline, the only one a 9-channel (inpainting) UNet fits

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
        # diffusers' public loader, handed the checked state dict. InstantID has no CLIP image encoder (its
        # image input is the face embedding), so diffusers' notice that `ip_adapter_image` is unavailable is
        # silenced, and the default CLIP feature extractor it registers for that input is taken back out.
        had_extractor = getattr(self, "feature_extractor", None) is not None
        verbosity = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()
        try:
            self.load_ip_adapter(
                state, subfolder=None, weight_name=None, image_encoder_folder=None, low_cpu_mem_usage=False
            )
        finally:
            diffusers_logging.set_verbosity(verbosity)
        if not had_extractor and getattr(self, "feature_extractor", None) is not None:
            self.register_modules(feature_extractor=None)
        adopt_face_layers(self.unet, scale)
        self.adapter_spec = spec
        return spec

    @property
    def adapter_spec(self) -> AdapterSpec | None:
        """Sizes of the loaded face adapter. Kept with the UNet, so pipelines that share it (``from_pipe``)
        share the adapter too."""
        return getattr(getattr(self.unet, "encoder_hid_proj", None), "adapter_spec", None)

    @adapter_spec.setter
    def adapter_spec(self, spec: AdapterSpec) -> None:
        projection = getattr(self.unet, "encoder_hid_proj", None)
        if not isinstance(projection, FaceTokenProjection):
            raise InvalidInputError("no face adapter is installed in this UNet: call load_ip_adapter_instantid")
        projection.adapter_spec = spec

    def _require_adapter(self) -> AdapterSpec:
        spec = self.adapter_spec
        if spec is None or not face_processors(self.unet):
            raise InvalidInputError(
                "no face adapter loaded (or it was replaced): call load_ip_adapter_instantid(path) first"
            )
        return spec

    @property
    def identitynet(self) -> ControlNetModel:
        """IdentityNet: the ControlNet, or the first one of a MultiControlNet."""
        return self._nets()[0]

    def _nets(self) -> list[torch.nn.Module]:
        return controlnets(self)

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


class StableDiffusionXLInstantIDPipeline(InstantIDMixin, StableDiffusionXLControlNetPipeline):
    """InstantID text-to-image for SDXL (drop-in for the published ``StableDiffusionXLInstantIDPipeline``)."""

    @torch.no_grad()
    @instantid_call(TEXT_TO_IMAGE)
    def __call__(self, req: CallRequest, kwargs: dict[str, Any]) -> StableDiffusionXLPipelineOutput | tuple:
        """Generate images of the person whose embedding is ``image_embeds``, posed by the keypoint picture
        ``image`` (see :func:`instantid.draw_kps`); or of several people, ``identities=[Person(...), ...]``.
        The published arguments keep their order and meaning; InstantID's own come last (the arguments are
        declared once, in :class:`~instantid.pipelines.call.CallRequest`).
        ``controlnet_cache_interval=N > 1`` is a lossy speed lever: IdentityNet runs every N-th step only.
        ``style_image`` (after :meth:`load_style_adapter`): the picture takes its style, at ``style_scale``
        (see :mod:`instantid.pipelines.style`)."""
        # 1. Check inputs (cheap, before anything runs).
        self._check(req, kwargs)

        # 2. Encode the prompt (or take the given embeddings) and the faces (embedding -> tokens, once).
        enc = self._encode(req)

        # 3. Control images (keypoint pictures first); the output size defaults to theirs.
        images = self._prepare_control_images(req, enc)
        height, width = images[0][0].shape[-2:]

        # 4. Timesteps and initial noise.
        timesteps, _ = retrieve_timesteps(self.scheduler, req.num_inference_steps, enc.device)
        self._num_timesteps = len(timesteps)
        latents = self.prepare_latents(
            enc.total, self.unet.config.in_channels, height, width, enc.dtype, enc.device, req.generator, req.latents
        )
        timestep_cond = None
        if self.unet.config.time_cond_proj_dim is not None:
            scale = torch.tensor(req.guidance_scale - 1).repeat(enc.total)
            timestep_cond = self.get_guidance_scale_embedding(
                scale, embedding_dim=self.unet.config.time_cond_proj_dim
            ).to(device=enc.device, dtype=latents.dtype)

        # 5. SDXL micro-conditioning, as diffusers: sizes default to the output's; the negative ones apply
        # only when both negative_original_size and negative_target_size are given.
        add_time_ids = self._get_add_time_ids(
            size_or(req.original_size, (height, width)), tuple(req.crops_coords_top_left),
            size_or(req.target_size, (height, width)), dtype=enc.dtype, text_encoder_projection_dim=enc.projection_dim,
        )
        negative_time_ids = add_time_ids
        if req.negative_original_size is not None and req.negative_target_size is not None:
            negative_time_ids = self._get_add_time_ids(
                tuple(req.negative_original_size), tuple(req.negative_crops_coords_top_left),
                tuple(req.negative_target_size), dtype=enc.dtype, text_encoder_projection_dim=enc.projection_dim,
            )

        # 6. Freeze the call and denoise, 7. decode.
        state = self._call_state(req, enc, images, add_time_ids, negative_time_ids, len(timesteps), timestep_cond,
                                 kwargs)
        return self._finish(state, latents, timesteps, req.output_type, req.return_dict)


class StableDiffusionXLInstantIDImg2ImgPipeline(InstantIDMixin, StableDiffusionXLControlNetImg2ImgPipeline):
    """InstantID image-to-image: start from ``image`` (noised to ``strength``), pose from ``control_image``."""

    @torch.no_grad()
    @instantid_call(IMAGE_TO_IMAGE)
    def __call__(self, req: CallRequest, kwargs: dict[str, Any]) -> StableDiffusionXLPipelineOutput | tuple:
        """Repaint ``image`` as the person of ``image_embeds`` posed by ``control_image`` (keypoints), or as
        several people (``identities=[Person(...), ...]``). ``controlnet_cache_interval``, ``style_image``: as
        text-to-image."""
        # 1. Check inputs (cheap, before anything runs).
        self._check(req, kwargs)
        if req.init_image is None:
            raise InvalidInputError("image (the init image) is required")
        check_strength(req.strength)

        # 2. Encode the prompt (or take the given embeddings) and the faces.
        enc = self._encode(req)

        # 3. Control images decide the size; the init image is resized to it.
        images = self._prepare_control_images(req, enc)
        height, width = images[0][0].shape[-2:]
        init = self.image_processor.preprocess(req.init_image, height=height, width=width).to(torch.float32)

        # 4. Timesteps cut by strength, and the noised init latents.
        timesteps = self._strength_timesteps(req, enc.device)
        latents = req.latents
        if latents is None:
            latents = self.prepare_latents(
                init, timesteps[:1].repeat(enc.total), enc.batch, req.num_images_per_prompt, enc.dtype, enc.device,
                req.generator, True,
            )

        # 5. SDXL micro-conditioning (sizes and aesthetic scores), as diffusers: the negative sizes default to
        # the positive ones.
        original = size_or(req.original_size, (height, width))
        target = size_or(req.target_size, (height, width))
        add_time_ids, negative_time_ids = self._get_add_time_ids(
            original, tuple(req.crops_coords_top_left), target, req.aesthetic_score, req.negative_aesthetic_score,
            size_or(req.negative_original_size, original), tuple(req.negative_crops_coords_top_left),
            size_or(req.negative_target_size, target), dtype=enc.dtype, text_encoder_projection_dim=enc.projection_dim,
        )

        # 6. Freeze the call and denoise, 7. decode.
        state = self._call_state(req, enc, images, add_time_ids, negative_time_ids, len(timesteps), None, kwargs)
        return self._finish(state, latents, timesteps, req.output_type, req.return_dict)
