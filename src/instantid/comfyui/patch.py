"""The face branch of InstantID as ComfyUI attn2 replace patches on a cloned MODEL.

Per cross-attention layer (paper section 3.2, the published math):
``out = Attn(q, K_text, V_text) + scale * Attn(q, to_k_ip(face tokens), to_v_ip(face tokens))``, the second
term multiplied by a region mask where one is given (the published "enhance non-face region", or one region
per person). ComfyUI batches the positive and negative prompts together and says which chunk is which in
``cond_or_uncond``; the negative chunk gets the Resampler's answer to a zero embedding, as the published
pipeline's negative branch does.

Everything per application lives in one frozen :class:`FaceConditioning` shared by the layer patches, which
hold only their own weights; ComfyUI moves patches between devices through their ``to``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import comfy.utils
import torch
import torch.nn.functional as F
from comfy.ldm.modules.attention import optimized_attention

from instantid.comfyui.adapter import FaceAdapter, LayerKey, check_fits, cross_attention_layers
from instantid.core.attention import mask_weights
from instantid.errors import InvalidInputError

VAE_STRIDE = 8  # latent pixel -> picture pixels (SDXL's VAE): masks are resized to the picture first


def picture_mask(mask: torch.Tensor, latent: tuple[int, int]) -> torch.Tensor:
    """An (H, W) region mask on the picture of a ``latent`` = (h, w) latent, cropped and scaled as ComfyUI
    fits a ControlNet's picture to the latent (centre crop, then resize), so that mask and keypoints agree."""
    picture = (latent[0] * VAE_STRIDE, latent[1] * VAE_STRIDE)
    if tuple(mask.shape) == picture:
        return mask
    return comfy.utils.common_upscale(mask[None, None].float(), picture[1], picture[0], "bilinear", "center")[0, 0]


@dataclass(frozen=True)
class FaceRegionTokens:
    """One identity's face tokens and where they act."""

    cond: torch.Tensor  # (1, Q, D): Resampler(face embedding)
    uncond: torch.Tensor  # (1, Q, D): Resampler(zero embedding), for the negative prompt
    mask: torch.Tensor | None = None  # (H, W) in [0, 1], any size (fitted like the keypoints); None = everywhere

    def batch(self, cond_or_uncond: list[int], batch: int) -> torch.Tensor:
        """(batch, Q, D) tokens for ComfyUI's batch of chunks (0 = positive, 1 = negative)."""
        per_chunk = batch // max(len(cond_or_uncond), 1)
        chunks = [(self.uncond if c == 1 else self.cond).expand(per_chunk, -1, -1) for c in cond_or_uncond]
        return torch.cat(chunks) if chunks else self.cond.expand(batch, -1, -1)

    def to(self, device: torch.device | str) -> FaceRegionTokens:
        mask = None if self.mask is None else self.mask.to(device)
        return FaceRegionTokens(self.cond.to(device), self.uncond.to(device), mask)


@dataclass(frozen=True)
class FaceConditioning:
    """The face conditioning of one Apply node: tokens per region, adapter strength and its sigma window."""

    regions: tuple[FaceRegionTokens, ...]
    scale: float
    sigma_start: float  # the branch acts while sigma_end <= sigma <= sigma_start
    sigma_end: float
    # Region weights per (region, token count, latent size): the same for every layer of that grid and every step.
    grids: dict = field(default_factory=dict, compare=False, repr=False)

    def active(self, sigmas: torch.Tensor | None) -> bool:
        if self.scale == 0:
            return False
        if sigmas is None:
            return True
        sigma = float(sigmas.detach().reshape(-1)[0])
        return self.sigma_end <= sigma <= self.sigma_start

    def weights(self, index: int, tokens: int, latent: tuple[int, int], like: torch.Tensor) -> torch.Tensor | None:
        """Region ``index``'s mask at a layer's token grid, (1, tokens, 1); None where it acts everywhere."""
        mask = self.regions[index].mask
        if mask is None:
            return None
        key = (index, tokens, latent, like.device, like.dtype)
        if key not in self.grids:
            self.grids[key] = mask_weights(picture_mask(mask, latent), tokens, like).reshape(1, tokens, 1)
        return self.grids[key]

    def to(self, device: torch.device | str) -> FaceConditioning:
        return replace(self, regions=tuple(r.to(device) for r in self.regions), grids={})


class FaceAttentionPatch:
    """ComfyUI attn2 replace patch of one layer: text attention plus the face branch of each region.

    A patch already on the layer (an earlier Apply InstantID, another pack's IP-Adapter) is kept as ``previous``
    and computes the first term, so patches stack rather than replace each other."""

    def __init__(self, layer: LayerKey, to_k: torch.Tensor, to_v: torch.Tensor, faces: FaceConditioning,
                 previous: Callable | None = None) -> None:
        self.layer = layer
        self.to_k = to_k  # (inner, D)
        self.to_v = to_v
        self.faces = faces
        self.previous = previous

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        heads = extra_options["n_heads"]
        precision = extra_options.get("attn_precision")
        if self.previous is None:
            out = optimized_attention(q, k, v, heads, attn_precision=precision)
        else:
            out = self.previous(q, k, v, extra_options)
        faces = self.faces
        if not faces.active(extra_options.get("sigmas")):
            return out
        cond_or_uncond = extra_options.get("cond_or_uncond", [0])
        latent = tuple(extra_options.get("original_shape", (0, 0, 0, 0))[-2:])
        to_k, to_v = self.to_k.to(q), self.to_v.to(q)
        for index, region in enumerate(faces.regions):
            tokens = region.batch(cond_or_uncond, q.shape[0]).to(q)
            face = optimized_attention(q, F.linear(tokens, to_k), F.linear(tokens, to_v), heads,
                                       attn_precision=precision)
            weights = faces.weights(index, q.shape[1], latent, face)
            out = out + faces.scale * (face if weights is None else face * weights)
        return out

    def to(self, device: torch.device | str) -> FaceAttentionPatch:
        previous = self.previous.to(device) if hasattr(self.previous, "to") else self.previous
        return FaceAttentionPatch(self.layer, self.to_k.to(device), self.to_v.to(device), self.faces.to(device),
                                  previous)


def face_regions(adapter: FaceAdapter, embeddings: list[torch.Tensor], masks: list[torch.Tensor | None]
                 ) -> tuple[FaceRegionTokens, ...]:
    """One :class:`FaceRegionTokens` per identity from its (E,) fused embedding and optional (H, W) mask."""
    regions = []
    for embedding, mask in zip(embeddings, masks, strict=True):
        cond, uncond = adapter.face_tokens(embedding.reshape(1, -1).float())
        regions.append(FaceRegionTokens(cond, uncond, None if mask is None else mask.float()))
    return tuple(regions)


def patch_model(model, adapter: FaceAdapter, regions: tuple[FaceRegionTokens, ...], strength: float,
                start_at: float, end_at: float):
    """A clone of ComfyUI ``model`` (a ModelPatcher) whose cross-attention layers all carry the face branch;
    the input model is left as it was."""
    if not 0 <= start_at <= end_at <= 1:
        raise InvalidInputError(f"start_at and end_at must satisfy 0 <= start_at <= end_at <= 1, got {start_at}, "
                                f"{end_at}")
    layers = cross_attention_layers(model.get_model_object("diffusion_model"))
    check_fits(adapter, layers)
    sampling = model.get_model_object("model_sampling")
    faces = FaceConditioning(regions, float(strength), float(sampling.percent_to_sigma(start_at)),
                             float(sampling.percent_to_sigma(end_at)))
    patched = model.clone()
    existing = patched.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})
    for layer, (to_k, to_v) in zip(layers, adapter.weights, strict=True):
        patch = FaceAttentionPatch(layer.key, to_k, to_v, faces, existing.get(layer.key))
        patched.set_model_attn2_replace(patch, *layer.key)
    return patched
