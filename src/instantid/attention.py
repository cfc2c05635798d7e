"""Decoupled cross-attention with InstantID's face-region mask.

diffusers' ``IPAdapterAttnProcessor2_0`` implements the image adapter of the paper,
``out = Attn(q, K_text, V_text) + scale * Attn(q, to_k_ip(tokens), to_v_ip(tokens))``, and its weight layout
is the published one; :class:`FaceAttnProcessor` keeps that layout and math and adds two things:

* the optional face-region mask that confines the image branch to the face box ("enhance non-face region" in
  the demo). The published code keeps that mask in a module-level global, so one masked call leaks into every
  later call; here it lives on the processors of one UNet and is set and cleared around a single call;
* a per-call cache: the face tokens do not change between denoising steps, so the Resampler runs once per
  call (not inside every UNet step) and each layer projects the tokens to keys and values once per call (the
  same for the resized mask). On a fast GPU SDXL is launch-bound: fewer small operators per step is speed.

Both live only inside :func:`face_region`, which the pipelines wrap around their denoising loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0


class FaceAttnProcessor(IPAdapterAttnProcessor2_0):
    """IP-Adapter attention whose image branch can be limited to a face region, with per-call caching."""

    def __init__(self, hidden_size: int, cross_attention_dim: int, num_tokens=(16,), scale=1.0) -> None:
        super().__init__(hidden_size, cross_attention_dim, num_tokens=num_tokens, scale=scale)
        # (H, W) mask in [0, 1] at output-image resolution; None means "no region control".
        self.face_mask: torch.Tensor | None = None
        # Face keys/values and resized masks of the current call; None outside a call (nothing is cached).
        self.call_cache: dict | None = None

    @classmethod
    def adopt(cls, processor: IPAdapterAttnProcessor2_0) -> FaceAttnProcessor:
        """Wrap a loaded diffusers IP-Adapter processor, sharing (not copying) its weights."""
        with torch.device("meta"):
            face = cls(processor.hidden_size, processor.cross_attention_dim, processor.num_tokens, processor.scale)
        face.to_k_ip = processor.to_k_ip
        face.to_v_ip = processor.to_v_ip
        return face

    def _cached(self, key: object, make):
        if self.call_cache is None:
            return make()
        if key not in self.call_cache:
            self.call_cache[key] = make()
        return self.call_cache[key]

    def _region_weights(self, num_queries: int, like: torch.Tensor) -> torch.Tensor:
        """The mask at this layer's resolution as (1, num_queries, 1), resized as the published code does
        (nearest, by the area ratio between the image and this layer's token grid)."""
        mask = self.face_mask
        h, w = mask.shape
        ratio = (h * w / num_queries) ** 0.5
        small = F.interpolate(mask[None, None].to(like), scale_factor=1 / ratio, mode="nearest")
        if small.numel() != num_queries:
            raise ValueError(
                f"face mask of {w}x{h} does not map onto a {num_queries}-token attention grid; "
                "the mask must have the output image's size"
            )
        return small.reshape(1, -1, 1)

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | tuple | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        scale: float = 1.0,
        ip_adapter_masks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # Anything but InstantID's own single-adapter call goes to diffusers unchanged.
        if not isinstance(encoder_hidden_states, tuple) or len(self.scale) != 1 or ip_adapter_masks is not None:
            return super().__call__(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, scale, ip_adapter_masks
            )
        text_states, (face_tokens,) = encoder_hidden_states
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, num_queries, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, text_states.shape[1], batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if attn.norm_cross:
            text_states = attn.norm_encoder_hidden_states(text_states)

        query = attn.to_q(hidden_states)
        head_dim = query.shape[-1] // attn.heads

        def heads(x: torch.Tensor) -> torch.Tensor:  # (B, L, H*D) -> (B, H, L, D)
            return x.reshape(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        def merge(x: torch.Tensor) -> torch.Tensor:  # (B, H, L, D) -> (B, L, H*D)
            return x.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)

        q = heads(query)
        out = merge(
            F.scaled_dot_product_attention(
                q, heads(attn.to_k(text_states)), heads(attn.to_v(text_states)), attn_mask=attention_mask
            )
        )
        ip_scale = self.scale[0]
        if ip_scale != 0:
            face_k, face_v = self._cached(
                ("kv", batch_size), lambda: (heads(self.to_k_ip[0](face_tokens)), heads(self.to_v_ip[0](face_tokens)))
            )
            face = merge(F.scaled_dot_product_attention(q, face_k, face_v))
            if self.face_mask is not None:
                face = face * self._cached(("mask", num_queries), lambda: self._region_weights(num_queries, face))
            out = torch.add(out, face, alpha=ip_scale)

        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class FixedFaceTokens(torch.nn.Module):
    """Stands in for ``unet.encoder_hid_proj`` during one call: returns the face tokens computed once, in the
    layout diffusers' image projection returns them (one (B, 1, Q, D) tensor per adapter)."""

    def __init__(self, tokens: torch.Tensor) -> None:
        super().__init__()
        self.tokens = [tokens[:, None]]

    def forward(self, image_embeds: object) -> list[torch.Tensor]:
        return self.tokens


def face_processors(unet: torch.nn.Module) -> list[FaceAttnProcessor]:
    """The InstantID processors installed in ``unet`` (empty when no face adapter is loaded)."""
    return [p for p in unet.attn_processors.values() if isinstance(p, FaceAttnProcessor)]


@contextmanager
def face_region(unet: torch.nn.Module, mask: torch.Tensor | None, tokens: torch.Tensor | None = None) -> Iterator[None]:
    """One generation call: the face mask (or none) and a fresh per-call cache on every face processor of
    ``unet`` and, given the call's face tokens (B, Q, D), the UNet reuses them instead of re-running the
    Resampler each step. Everything is restored afterwards, whatever happens."""
    processors = face_processors(unet)
    projection = unet.encoder_hid_proj
    for p in processors:
        p.face_mask = mask
        p.call_cache = {}
    if tokens is not None and processors:
        # Swapped for the call only; it holds no parameters, so .to() and offload hooks have nothing to move.
        unet._modules["encoder_hid_proj"] = FixedFaceTokens(tokens)
    try:
        yield
    finally:
        unet._modules["encoder_hid_proj"] = projection
        for p in processors:
            p.face_mask = None
            p.call_cache = None
