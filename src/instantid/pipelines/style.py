"""Style reference images in the InstantID pipelines (InstantStyle; the weights and math: :mod:`instantid.core.style`).

    pipe.load_style_adapter("sdxl_models/ip-adapter_sdxl.safetensors")   # its image_encoder/ beside it
    pipe(prompt, image_embeds=face, image=kps, style_image=reference, style_scale=1.0)

``style_scale``: a number ``s`` is InstantStyle's style block at ``s`` (``{"up": {"block_0": [0.0, s, 0.0]}}``);
a dict is diffusers' ``set_ip_adapter_scale`` format, e.g. style and layout blocks. The reference image is encoded
as diffusers' own IP-Adapter pipelines encode ``ip_adapter_image`` (negative = a zero embedding under guidance;
several images = their tokens side by side), once per call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from instantid.core.adapter import load_adapter_state_dict
from instantid.core.attention import PreparedStyle
from instantid.core.style import (
    INSTALLED_BLOCKS,
    STYLE_WHERE,
    ScaleConfig,
    StyleSpec,
    check_image_encoder,
    check_style_scale,
    inspect_style_adapter,
    install_style_adapter,
    prepare_style,
    style_spec,
)
from instantid.core.style_blocks import IMAGE_ENCODER_FOLDER, block_scales
from instantid.errors import IncompatibleWeightsError, InvalidInputError, MissingWeightsError


def load_image_encoder(folder: str | Path, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """The adapter's CLIP image encoder (``CLIPVisionModelWithProjection``) from a local folder."""
    from transformers import CLIPVisionModelWithProjection

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise MissingWeightsError(f"style image encoder not found: no config.json in {folder} ({STYLE_WHERE})")
    try:
        return CLIPVisionModelWithProjection.from_pretrained(folder, dtype=dtype)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise IncompatibleWeightsError(f"cannot load the style image encoder {folder}: {reason}") from None


def style_images(value: Any) -> list[Any]:
    """``style_image`` as a non-empty list of pictures (PIL images or HxWx3 arrays)."""
    images = list(value) if isinstance(value, (list, tuple)) else [value]
    if not images or not all(isinstance(i, (PIL.Image.Image, np.ndarray)) for i in images):
        raise InvalidInputError("style_image must be a PIL image (or an RGB array), or a non-empty list of them")
    return images


def call_scale(style_scale: ScaleConfig | None) -> ScaleConfig:
    """A call's style scale in diffusers' format: a number is InstantStyle's style block at that strength."""
    if style_scale is None:
        return block_scales("style", 1.0)
    if isinstance(style_scale, (int, float)) and not isinstance(style_scale, bool):
        return block_scales("style", float(style_scale))
    return style_scale


STYLE_MODULES = ("image_encoder", "feature_extractor")  # what load_style_adapter registers on a pipeline


def share_style_modules(variant: Any, pipe: Any) -> Any:
    """``variant`` (made from ``pipe`` by ``from_pipe``: image-to-image, extra ControlNets) with ``pipe``'s style
    image encoder: a variant made before the style adapter loaded has none, though the adapter's layers are in the
    UNet they share. Returns ``variant``."""
    for name in STYLE_MODULES:
        module = getattr(pipe, name, None)
        if module is not None and getattr(variant, name, None) is not module:
            variant.register_modules(**{name: module})
    return variant


class StyleMixin:
    """What a style reference image adds to an InstantID pipeline."""

    def load_style_adapter(
        self, model_ckpt: str | Path, image_encoder: str | Path | torch.nn.Module | None = None,
        blocks: ScaleConfig = INSTALLED_BLOCKS,
    ) -> StyleSpec:
        """Load a standard SDXL IP-Adapter (``ip-adapter_sdxl.bin`` / ``.safetensors``) beside the face adapter,
        into the layers of ``blocks`` (default: InstantStyle's style and layout blocks, so each call can use either),
        with its CLIP image encoder (default: the ``image_encoder/`` folder beside the file). Everything is checked
        before anything is installed."""
        self._require_adapter()
        source = str(model_ckpt)
        state, _ = load_adapter_state_dict(model_ckpt, "style adapter", STYLE_WHERE)
        embed_dim, _, _ = inspect_style_adapter(state, source)
        if image_encoder is None:
            image_encoder = Path(model_ckpt).parent / IMAGE_ENCODER_FOLDER
        encoder = image_encoder if isinstance(image_encoder, torch.nn.Module) else load_image_encoder(image_encoder)
        check_image_encoder(encoder, embed_dim, source)
        spec = install_style_adapter(self.unet, state, source, blocks)
        self.register_modules(image_encoder=encoder.to(device=self.unet.device, dtype=self.unet.dtype))
        if getattr(self, "feature_extractor", None) is None:  # as diffusers' load_ip_adapter makes it
            from transformers import CLIPImageProcessor

            size = encoder.config.image_size
            self.register_modules(feature_extractor=CLIPImageProcessor(size=size, crop_size=size))
        return spec

    @property
    def style_spec(self) -> StyleSpec | None:
        """The loaded style adapter (kept with the UNet, like the face adapter), if any."""
        return style_spec(self.unet)

    def _check_style(self, style_image: Any, style_scale: ScaleConfig | None) -> None:
        if style_image is None:
            if style_scale is not None:
                raise InvalidInputError("style_scale needs style_image (the style reference picture)")
            return
        if self.style_spec is None or getattr(self, "image_encoder", None) is None:
            raise InvalidInputError("style_image needs a style adapter: call load_style_adapter(path) first")
        style_images(style_image)
        check_style_scale(self.unet, call_scale(style_scale))

    def _style_call(self, style_image: Any, style_scale: ScaleConfig | None, total: int,
                    device: torch.device) -> PreparedStyle | None:
        """The call's style branch: the reference image(s) encoded once, as diffusers encodes ``ip_adapter_image``
        (one row per image of the call, zero embeddings as the negative half under guidance)."""
        if style_image is None:
            return None
        embeds, negative = self.encode_image(style_images(style_image), device, 1)  # (N, E) each
        embeds = torch.cat([embeds[None]] * total)
        if self.do_classifier_free_guidance:
            embeds = torch.cat([torch.cat([negative[None]] * total), embeds])
        return prepare_style(self.unet, embeds.to(device), call_scale(style_scale))
