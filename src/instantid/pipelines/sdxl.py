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

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
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
    FaceCall,
    FaceRegion,
    FaceTokenProjection,
    adopt_face_layers,
    face_processors,
    prepare_faces,
)
from instantid.core.denoise import StepInputs, denoise_step, face_tokens
from instantid.errors import EmbeddingSpaceError, IncompatibleWeightsError, InvalidInputError

EmbeddingInput = np.ndarray | torch.Tensor | Sequence[float] | Sequence[Sequence[float]]
MaskInput = PIL.Image.Image | np.ndarray | torch.Tensor


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


def controlnets(pipe: Any) -> list[torch.nn.Module]:
    """IdentityNet and any further ControlNets of ``pipe`` (ours or any diffusers ControlNet pipeline)."""
    net = getattr(pipe, "controlnet", None)
    if net is None:
        return []
    return list(net.nets) if isinstance(net, MultiControlNetModel) else [net]


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
class _Encoded:
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


def _pair(name: str, value: Any) -> None:
    if value is not None and (
        not isinstance(value, (tuple, list)) or len(value) != 2 or not all(isinstance(v, int) for v in value)
    ):
        raise InvalidInputError(f"{name} must be a (height, width) or (top, left) pair of integers, got {value!r}")


class InstantIDMixin:
    """What InstantID adds to a diffusers SDXL ControlNet pipeline."""

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

    # ---- checking ------------------------------------------------------------------------------
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
            _pair(name, getattr(req, name))
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

    # ---- encoding ------------------------------------------------------------------------------
    def _people(self, req: CallRequest) -> list[Person]:
        """The identities of the call: the given list, or the single one of the published arguments."""
        if req.identities is not None:
            return list(req.identities)
        keypoints = req.keypoints[0] if isinstance(self.controlnet, MultiControlNetModel) else req.keypoints
        return [Person(req.image_embeds, keypoints, req.control_mask, req.image_embeds_weights)]

    def _face_tokens(self, person: Person, total: int, cfg: bool, device: torch.device,
                     dtype: torch.dtype) -> torch.Tensor:
        """One person's face tokens (B', Q, D); under guidance the negative half is the Resampler applied to a
        zero embedding, as published."""
        spec = self._require_adapter()
        emb = average_embeddings(person.image_embeds, person.weights)
        if emb.shape[1] != spec.embedding_dim:
            space = f" ({spec.embedding_space})" if spec.embedding_space else ""
            raise EmbeddingSpaceError(
                f"face embedding has {emb.shape[1]} values but the face adapter expects {spec.embedding_dim}"
                f"{space}: use the face model the adapter was trained with"
            )
        emb = emb.to(device=device, dtype=dtype).repeat(total, 1)
        if cfg:
            emb = torch.cat([torch.zeros_like(emb), emb])
        return face_tokens(self.unet, emb).to(device=device, dtype=dtype)

    def _encode(self, req: CallRequest) -> _Encoded:
        """The text embeddings (from the prompt or as given) and every person's face tokens."""
        self._guidance_scale = req.guidance_scale
        self._clip_skip = req.clip_skip
        self._cross_attention_kwargs = req.cross_attention_kwargs
        self._interrupt = False
        if isinstance(req.prompt, str):
            batch = 1
        elif isinstance(req.prompt, list):
            batch = len(req.prompt)
        else:
            batch = req.prompt_embeds.shape[0]
        device = self._execution_device
        cfg = self.do_classifier_free_guidance
        text, negative, pooled, negative_pooled = self.encode_prompt(
            req.prompt, req.prompt_2, device, req.num_images_per_prompt, cfg, req.negative_prompt,
            req.negative_prompt_2, prompt_embeds=req.prompt_embeds, negative_prompt_embeds=req.negative_prompt_embeds,
            pooled_prompt_embeds=req.pooled_prompt_embeds,
            negative_pooled_prompt_embeds=req.negative_pooled_prompt_embeds,
            lora_scale=(req.cross_attention_kwargs or {}).get("scale"), clip_skip=req.clip_skip,
        )
        total = batch * req.num_images_per_prompt
        tokens = tuple(self._face_tokens(p, total, cfg, device, text.dtype) for p in self._people(req))
        if cfg:
            text, pooled = torch.cat([negative, text]), torch.cat([negative_pooled, pooled])
        return _Encoded(
            batch=batch, total=total, device=device, dtype=text.dtype,
            guess_mode=req.guess_mode or self.identitynet.config.global_pool_conditions,
            prompt_embeds=text.to(device), pooled=pooled.to(device), tokens=tokens,
            projection_dim=self.text_encoder_2.config.projection_dim
            if self.text_encoder_2 is not None else int(pooled.shape[-1]),
        )

    def _prepare_control_images(
        self, req: CallRequest, enc: _Encoded
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """Keypoint pictures (one per person, for IdentityNet) and the extra ControlNets' images, batched
        for the call; the output size defaults to the keypoint pictures' size."""
        # diffusers names the same helper differently in its text-to-image and image-to-image pipelines.
        prepare = self.prepare_control_image if hasattr(self, "prepare_control_image") else self.prepare_image

        def one(image: Any, net: torch.nn.Module) -> torch.Tensor:
            return prepare(
                image=image, width=req.width, height=req.height, batch_size=enc.total,
                num_images_per_prompt=req.num_images_per_prompt, device=enc.device, dtype=net.dtype,
                do_classifier_free_guidance=self.do_classifier_free_guidance, guess_mode=enc.guess_mode,
            )

        nets = self._nets()
        identity = tuple(one(p.keypoints, nets[0]) for p in self._people(req))
        if req.identities is None:
            extra_images = req.keypoints[1:] if len(nets) > 1 else []
        else:
            extra_images = req.keypoints or []
        extra = tuple(one(image, net) for image, net in zip(extra_images, nets[1:], strict=True))
        sizes = {tuple(image.shape[-2:]) for image in identity + extra}
        if len(sizes) != 1:
            raise InvalidInputError(
                f"the keypoint and control pictures have different sizes {sorted(sizes)}: give them one size"
            )
        return identity, extra

    @staticmethod
    def _face_mask_tensor(
        control_mask: MaskInput | None, height: int, width: int, device: torch.device, dtype: torch.dtype,
    ) -> torch.Tensor | None:
        """A region mask as an (H, W) tensor in [0, 1] (first channel / 255, as published)."""
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

    def _call_state(
        self, req: CallRequest, enc: _Encoded, images: tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]],
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

    # ---- sampling ------------------------------------------------------------------------------
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


def _size(value: Sequence[int] | None, default: tuple[int, int]) -> tuple[int, int]:
    return tuple(value) if value is not None else default


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
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        image_embeds: EmbeddingInput | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        controlnet_conditioning_scale: float | list[float] = 1.0,
        guess_mode: bool = False,
        control_guidance_start: float | list[float] = 0.0,
        control_guidance_end: float | list[float] = 1.0,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
        negative_original_size: tuple[int, int] | None = None,
        negative_crops_coords_top_left: tuple[int, int] = (0, 0),
        negative_target_size: tuple[int, int] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        image_embeds_weights: Sequence[float] | None = None,
        ip_adapter_scale: float | None = None,
        control_mask: MaskInput | None = None,
        identities: Sequence[Person] | None = None,
        controlnet_cache_interval: int = 1,
        **kwargs: Any,
    ) -> StableDiffusionXLPipelineOutput | tuple:
        """Generate images of the person whose embedding is ``image_embeds``, posed by the keypoint picture
        ``image`` (see :func:`instantid.draw_kps`); or of several people, ``identities=[Person(...), ...]``.
        The published arguments keep their order and meaning; InstantID's own come last.
        ``controlnet_cache_interval=N > 1`` is a lossy speed lever: IdentityNet runs every N-th step only."""
        # 1. Check inputs (cheap, before anything runs).
        req = CallRequest.of(locals(), keypoints=image)
        self._check(req, kwargs)

        # 2. Encode the prompt (or take the given embeddings) and the faces (embedding -> tokens, once).
        enc = self._encode(req)

        # 3. Control images (keypoint pictures first); the output size defaults to theirs.
        images = self._prepare_control_images(req, enc)
        height, width = images[0][0].shape[-2:]

        # 4. Timesteps and initial noise.
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, enc.device)
        self._num_timesteps = len(timesteps)
        latents = self.prepare_latents(
            enc.total, self.unet.config.in_channels, height, width, enc.dtype, enc.device, generator, latents
        )
        timestep_cond = None
        if self.unet.config.time_cond_proj_dim is not None:
            scale = torch.tensor(guidance_scale - 1).repeat(enc.total)
            timestep_cond = self.get_guidance_scale_embedding(
                scale, embedding_dim=self.unet.config.time_cond_proj_dim
            ).to(device=enc.device, dtype=latents.dtype)

        # 5. SDXL micro-conditioning, as diffusers: sizes default to the output's; the negative ones apply
        # only when both negative_original_size and negative_target_size are given.
        add_time_ids = self._get_add_time_ids(
            _size(original_size, (height, width)), tuple(crops_coords_top_left), _size(target_size, (height, width)),
            dtype=enc.dtype, text_encoder_projection_dim=enc.projection_dim,
        )
        negative_time_ids = add_time_ids
        if negative_original_size is not None and negative_target_size is not None:
            negative_time_ids = self._get_add_time_ids(
                tuple(negative_original_size), tuple(negative_crops_coords_top_left), tuple(negative_target_size),
                dtype=enc.dtype, text_encoder_projection_dim=enc.projection_dim,
            )

        # 6. Freeze the call and denoise, 7. decode.
        state = self._call_state(req, enc, images, add_time_ids, negative_time_ids, len(timesteps), timestep_cond,
                                 kwargs)
        return self._finish(state, latents, timesteps, output_type, return_dict)


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
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        image_embeds: EmbeddingInput | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        controlnet_conditioning_scale: float | list[float] = 0.8,
        guess_mode: bool = False,
        control_guidance_start: float | list[float] = 0.0,
        control_guidance_end: float | list[float] = 1.0,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
        negative_original_size: tuple[int, int] | None = None,
        negative_crops_coords_top_left: tuple[int, int] = (0, 0),
        negative_target_size: tuple[int, int] | None = None,
        aesthetic_score: float = 6.0,
        negative_aesthetic_score: float = 2.5,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        image_embeds_weights: Sequence[float] | None = None,
        ip_adapter_scale: float | None = None,
        control_mask: MaskInput | None = None,
        identities: Sequence[Person] | None = None,
        controlnet_cache_interval: int = 1,
        **kwargs: Any,
    ) -> StableDiffusionXLPipelineOutput | tuple:
        """Repaint ``image`` as the person of ``image_embeds`` posed by ``control_image`` (keypoints), or as
        several people (``identities=[Person(...), ...]``). ``controlnet_cache_interval``: as text-to-image."""
        # 1. Check inputs (cheap, before anything runs).
        req = CallRequest.of(locals(), keypoints=control_image)
        self._check(req, kwargs)
        if image is None:
            raise InvalidInputError("image (the init image) is required")
        if not 0 < strength <= 1:
            raise InvalidInputError(f"strength must be in (0, 1], got {strength}")

        # 2. Encode the prompt (or take the given embeddings) and the faces.
        enc = self._encode(req)

        # 3. Control images decide the size; the init image is resized to it.
        images = self._prepare_control_images(req, enc)
        height, width = images[0][0].shape[-2:]
        init = self.image_processor.preprocess(image, height=height, width=width).to(torch.float32)

        # 4. Timesteps cut by strength, and the noised init latents.
        self.scheduler.set_timesteps(num_inference_steps, device=enc.device)
        requested = num_inference_steps
        timesteps, num_inference_steps = self.get_timesteps(num_inference_steps, strength, enc.device)
        if len(timesteps) == 0:
            raise InvalidInputError(
                f"strength {strength} leaves no denoising step at {requested} step(s): "
                f"give at least {math.ceil(1 / strength)} steps or a higher strength"
            )
        self._num_timesteps = len(timesteps)
        if latents is None:
            latents = self.prepare_latents(
                init, timesteps[:1].repeat(enc.total), enc.batch, num_images_per_prompt, enc.dtype, enc.device,
                generator, True,
            )

        # 5. SDXL micro-conditioning (sizes and aesthetic scores), as diffusers: the negative sizes default to
        # the positive ones.
        original = _size(original_size, (height, width))
        target = _size(target_size, (height, width))
        add_time_ids, negative_time_ids = self._get_add_time_ids(
            original, tuple(crops_coords_top_left), target, aesthetic_score, negative_aesthetic_score,
            _size(negative_original_size, original), tuple(negative_crops_coords_top_left),
            _size(negative_target_size, target), dtype=enc.dtype, text_encoder_projection_dim=enc.projection_dim,
        )

        # 6. Freeze the call and denoise, 7. decode.
        state = self._call_state(req, enc, images, add_time_ids, negative_time_ids, len(timesteps), None, kwargs)
        return self._finish(state, latents, timesteps, output_type, return_dict)
