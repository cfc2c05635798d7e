"""Style reference images (InstantStyle: Wang et al. 2024, "InstantStyle: Free Lunch towards Style-Preserving in
Text-to-Image Generation"): a standard SDXL IP-Adapter beside InstantID's face adapter, acting only in the UNet
block that carries style (``up_blocks.0.attentions.1``) and optionally the one that carries layout
(``down_blocks.2.attentions.1``), so the picture takes the reference's style while the face keeps the identity.

The checkpoint is the h94/IP-Adapter ``sdxl_models`` layout: ``ip-adapter_sdxl.bin`` / ``.safetensors`` holding
``image_proj`` (``proj.weight`` (T*D, E), ``proj.bias``, ``norm.*``: T = 4 tokens from one E-d CLIP image
embedding) and ``ip_adapter`` (``<n>.to_k_ip.weight`` / ``to_v_ip`` for every cross-attention layer, numbered as
the face adapter's), beside ``image_encoder/`` (a ``CLIPVisionModelWithProjection``).

In the UNet the style adapter is laid out as diffusers lays out a second IP-Adapter: image projection 1 of
``unet.encoder_hid_proj`` (a diffusers ``ImageProjection``) and the second entry of ``to_k_ip`` / ``to_v_ip`` of
each layer it acts on. Unlike diffusers, only the layers of the installed blocks get its weights (SDXL: 20 of 70
layers, about 200 MB in fp16 instead of 700 MB). Block scales are written as diffusers' ``set_ip_adapter_scale``
takes them (``{"up": {"block_0": [0.0, 1.0, 0.0]}}``) and expanded by diffusers' own helper, so a scale dict
means here what it means there. The scales, like the tokens, are per call (:class:`PreparedStyle`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.embeddings import ImageProjection

from instantid.core.adapter import _cross_attention_layers
from instantid.core.attention import FaceAttnProcessor, PreparedStyle, _project, face_processors
from instantid.core.style_blocks import (
    IMAGE_ENCODER_FOLDER,
    STYLE_BLOCK,
    STYLE_BLOCKS,
    STYLE_FILENAMES,
    STYLE_SUBFOLDER,
    STYLE_WHERE,
)
from instantid.errors import IncompatibleWeightsError, InvalidInputError

# Installed by default: both of InstantStyle's blocks, so that a call can choose either without loading again.
INSTALLED_BLOCKS = STYLE_BLOCKS["style+layout"]

ScaleConfig = float | dict[str, Any]  # diffusers' set_ip_adapter_scale format for one adapter


@dataclass(frozen=True)
class StyleSpec:
    """A loaded style adapter, all sizes read from its tensors."""

    image_embed_dim: int  # the CLIP image embedding it reads (ip-adapter_sdxl: 1280, ViT-bigG)
    num_tokens: int  # tokens per reference image (4)
    layers: tuple[str, ...]  # the processors (unet.attn_processors names) that carry its branch
    source: str


def expand_block_scales(unet: torch.nn.Module, scale: ScaleConfig) -> float | dict[str, float]:
    """``scale`` as diffusers' ``set_ip_adapter_scale`` reads it: a number, or ``{layer prefix: scale}`` covering
    every attention block (blocks not named get 0)."""
    try:
        from diffusers.loaders.unet_loader_utils import _maybe_expand_lora_scales
    except ImportError:  # diffusers keeps the helper private: a rename is one line, not a traceback
        import diffusers

        raise IncompatibleWeightsError(f"diffusers {diffusers.__version__} lacks the block-scale helper style "
                                       "images use: install a diffusers release from 0.32 to 0.42") from None
    if isinstance(scale, bool) or not isinstance(scale, (int, float, dict)):
        raise InvalidInputError(f"a style scale is a number or a block dict such as {STYLE_BLOCK}, got {scale!r}")
    # diffusers silently drops a block it does not know: a typo would switch the style off without a word.
    for side, blocks in (scale.items() if isinstance(scale, dict) else ()):
        if side not in ("down", "mid", "up"):
            raise InvalidInputError(f"style scale {scale!r}: {side!r} is not down, mid or up")
        if side != "mid" and isinstance(blocks, dict):
            have = [f"block_{i}" for i, b in enumerate(getattr(unet, f"{side}_blocks")) if hasattr(b, "attentions")]
            unknown = sorted(set(blocks) - set(have))
            if unknown:
                raise InvalidInputError(f"style scale {scale!r}: {side} has no attention block {unknown[0]} "
                                        f"(it has {', '.join(have)})")
    try:
        (expanded,) = _maybe_expand_lora_scales(unet, [scale], default_scale=0.0)
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidInputError(f"style scale {scale!r}: {exc}") from None
    values = expanded.values() if isinstance(expanded, dict) else [expanded]
    if any(not isinstance(v, (int, float)) or v < 0 for v in values):
        raise InvalidInputError(f"style scales must be numbers >= 0, got {scale!r}")
    return expanded


def layer_scale(name: str, expanded: float | dict[str, float]) -> float:
    """The scale of the processor ``name`` under an expanded config (the last matching prefix, as diffusers)."""
    if not isinstance(expanded, dict):
        return float(expanded)
    value = 0.0
    for prefix, scale in expanded.items():
        if name.startswith(prefix):
            value = float(scale)
    return value


def inspect_style_adapter(state: dict[str, dict[str, torch.Tensor]], source: str) -> tuple[int, int, int]:
    """``(image embedding size, tokens per image, token width)`` of a standard IP-Adapter's image projection."""
    proj = state["image_proj"]
    if "proj.weight" not in proj or "norm.weight" not in proj:
        kind = ("an IP-Adapter Plus or InstantID (Resampler) checkpoint" if "latents" in proj
                else "not a standard IP-Adapter")
        raise IncompatibleWeightsError(
            f"style adapter {source}: 'image_proj' lacks proj.weight / norm.weight ({kind}); use the standard SDXL "
            f"IP-Adapter ({STYLE_WHERE})"
        )
    width = proj["norm.weight"].shape[0]
    rows, embed_dim = proj["proj.weight"].shape
    if rows % width:
        raise IncompatibleWeightsError(
            f"style adapter {source}: proj.weight has {rows} rows, not a multiple of the token width {width}"
        )
    return embed_dim, rows // width, width


def _check_fits(state: dict, unet: torch.nn.Module, width: int, layers: list[tuple[int, str, int]],
                source: str) -> None:
    cross_dim = unet.config.cross_attention_dim
    if width != cross_dim:
        raise IncompatibleWeightsError(
            f"style adapter {source} makes {width}-d tokens but this UNet's cross-attention is {cross_dim}-d (an "
            "adapter for another base model, e.g. SD1.5 on SDXL?)"
        )
    for n, name, hidden in layers:
        for kind in ("k", "v"):
            key = f"{n}.to_{kind}_ip.weight"
            weight = state["ip_adapter"].get(key)
            if weight is None or tuple(weight.shape) != (hidden, cross_dim):
                found = "missing" if weight is None else f"of shape {tuple(weight.shape)}"
                raise IncompatibleWeightsError(
                    f"style adapter {source}: '{key}' for {name} is {found}, this UNet needs ({hidden}, {cross_dim})"
                )


def check_image_encoder(encoder: torch.nn.Module, embed_dim: int, source: str) -> None:
    """Refuse an image encoder whose embeddings the adapter cannot read."""
    produced = getattr(encoder.config, "projection_dim", None)
    if produced != embed_dim:
        raise IncompatibleWeightsError(
            f"style adapter {source} reads {embed_dim}-d image embeddings but the image encoder makes {produced}-d "
            f"ones: give the encoder it was trained with ({STYLE_SUBFOLDER}/{IMAGE_ENCODER_FOLDER} for "
            f"{STYLE_FILENAMES[1]})"
        )


def style_spec(unet: torch.nn.Module) -> StyleSpec | None:
    """The installed style adapter, if any."""
    layers = getattr(getattr(unet, "encoder_hid_proj", None), "image_projection_layers", ())
    return getattr(layers[1], "style_spec", None) if len(layers) > 1 else None


def remove_style_adapter(unet: torch.nn.Module) -> None:
    """Take an installed style adapter out again (the face adapter stays)."""
    for proc in face_processors(unet):
        if proc.style_index is not None:
            del proc.to_k_ip[1:]
            del proc.to_v_ip[1:]
            proc.scale, proc.num_tokens = list(proc.scale[:1]), list(proc.num_tokens[:1])
            proc.style_index = None
    layers = getattr(getattr(unet, "encoder_hid_proj", None), "image_projection_layers", None)
    if layers is not None:
        del layers[1:]


@torch.no_grad()
def install_style_adapter(unet: torch.nn.Module, state: dict, source: str,
                          blocks: ScaleConfig = INSTALLED_BLOCKS) -> StyleSpec:
    """Install the style adapter in the layers where ``blocks`` is not zero, beside the face adapter (which must
    be installed first); a style adapter installed before is replaced."""
    if not face_processors(unet):
        raise InvalidInputError("load the face adapter (load_ip_adapter_instantid) before the style adapter")
    embed_dim, num_tokens, width = inspect_style_adapter(state, source)
    expanded = expand_block_scales(unet, blocks)
    layers = [layer for layer in _cross_attention_layers(unet) if layer_scale(layer[1], expanded)]
    if not layers:
        raise InvalidInputError(f"style blocks {blocks!r} select no cross-attention layer")
    _check_fits(state, unet, width, layers, source)
    remove_style_adapter(unet)
    processors = unet.attn_processors
    like = next(iter(face_processors(unet))).to_k_ip[0].weight
    for index, (n, name, hidden) in enumerate(layers):
        proc = processors[name]
        if not isinstance(proc, FaceAttnProcessor):
            raise InvalidInputError(f"{name} has no face adapter layer; load the face adapter first")
        for kind, modules in (("k", proc.to_k_ip), ("v", proc.to_v_ip)):
            linear = torch.nn.Linear(width, hidden, bias=False, device=like.device, dtype=like.dtype)
            linear.weight.copy_(state["ip_adapter"][f"{n}.to_{kind}_ip.weight"])
            modules.append(linear.requires_grad_(False))
        proc.scale = [*proc.scale[:1], layer_scale(name, expanded)]
        proc.num_tokens = [*proc.num_tokens[:1], num_tokens]
        proc.style_index = index
    projection = ImageProjection(embed_dim, width, num_tokens)
    proj = state["image_proj"]
    projection.load_state_dict({"image_embeds.weight": proj["proj.weight"], "image_embeds.bias": proj["proj.bias"],
                                "norm.weight": proj["norm.weight"], "norm.bias": proj["norm.bias"]})
    projection.to(device=like.device, dtype=like.dtype).requires_grad_(False)
    spec = StyleSpec(embed_dim, num_tokens, tuple(name for _, name, _ in layers), source)
    projection.style_spec = spec
    unet.encoder_hid_proj.image_projection_layers.append(projection)
    return spec


def check_style_scale(unet: torch.nn.Module, scale: ScaleConfig) -> tuple[StyleSpec, float | dict[str, float]]:
    """The installed style adapter and ``scale`` expanded, refusing scales on layers it was not loaded into."""
    spec = style_spec(unet)
    if spec is None:
        raise InvalidInputError("no style adapter loaded: call load_style_adapter first")
    expanded = expand_block_scales(unet, scale)
    asked = {name for _, name, _ in _cross_attention_layers(unet) if layer_scale(name, expanded)}
    absent = sorted(asked - set(spec.layers))
    if absent:
        raise InvalidInputError(
            f"the style scales reach {len(absent)} layer(s) the style adapter was not loaded into (e.g. "
            f"{absent[0].removesuffix('.processor')}); load it with those blocks (load_style_adapter(blocks=...))"
        )
    return spec, expanded


def prepare_style(unet: torch.nn.Module, embeds: torch.Tensor, scale: ScaleConfig) -> PreparedStyle:
    """The style branch of one call: CLIP image embeddings (B', N, E) of N reference images (the UNet's batch,
    negative half first under guidance) -> every style layer's keys and values, and its scale under ``scale``
    (diffusers' format). Computed as diffusers' UNet does at every step (the N images' tokens side by side),
    once for the whole loop."""
    spec, expanded = check_style_scale(unet, scale)
    projection = unet.encoder_hid_proj.image_projection_layers[1]
    batch, count = embeds.shape[:2]
    flat = embeds.reshape(batch * count, -1)
    param = projection.image_embeds.weight
    # Under CPU offload the UNet's parts may sit elsewhere than the call (as for the face tokens).
    tokens = projection(flat if param.device.type == "meta" else flat.to(param.device)).to(embeds.device)
    tokens = tokens.reshape(batch, count * spec.num_tokens, -1)
    kv: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(spec.layers)
    scales = [0.0] * len(spec.layers)
    for name, proc in unet.attn_processors.items():
        if not isinstance(proc, FaceAttnProcessor) or proc.style_index is None:
            continue
        scales[proc.style_index] = layer_scale(name, expanded)
        if scales[proc.style_index]:
            heads = unet.get_submodule(name.removesuffix(".processor")).heads

            def split(x: torch.Tensor, heads: int = heads) -> torch.Tensor:  # (B', T, H*d) -> (B', H, T, d)
                return x.reshape(batch, -1, heads, x.shape[-1] // heads).transpose(1, 2)

            kv[proc.style_index] = (split(_project(proc.to_k_ip[1], tokens)), split(_project(proc.to_v_ip[1], tokens)))
    return PreparedStyle(tuple(kv), tuple(scales))
