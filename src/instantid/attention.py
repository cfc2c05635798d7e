"""Decoupled cross-attention with InstantID's face regions, fed per call.

diffusers' ``IPAdapterAttnProcessor2_0`` implements the image adapter of the paper,
``out = Attn(q, K_text, V_text) + scale * Attn(q, to_k_ip(tokens), to_v_ip(tokens))``, and its weight layout
is the published one; :class:`FaceAttnProcessor` keeps that layout and math and holds only those weights.
Everything that varies per call travels in one :class:`FaceCall` value:

* the face tokens of each identity and its region mask. One identity without a mask is the published
  pipeline; one with a mask is its "enhance non-face region" (the published code kept that mask in a
  module-level global, so one masked call leaked into every later call); several identities each act only
  inside their own region (the paper's multi-identity synthesis);
* a per-call cache: the face tokens do not change between denoising steps, so the Resampler runs once per
  call (not inside every UNet step) and each layer projects the tokens to keys and values once per call (the
  same for the resized masks). On a fast GPU SDXL is launch-bound: fewer small operators per step is speed.

The value reaches the processors through diffusers' own channel for image conditioning: the pipeline passes
it as ``added_cond_kwargs["image_embeds"]``, the UNet hands it to its image projection,
:class:`FaceTokenProjection` passes it through unchanged (it is already projected), and the UNet gives it to
every cross-attention processor as the image half of ``encoder_hidden_states``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0
from diffusers.models.embeddings import MultiIPAdapterImageProjection


@dataclass(frozen=True)
class FaceRegion:
    """One identity's face tokens and where they act."""

    tokens: torch.Tensor  # (B, Q, D): Resampler output, the UNet's batch (negative half first under guidance)
    mask: torch.Tensor | None = None  # (H, W) in [0, 1] at output-image resolution; None = everywhere


@dataclass(frozen=True)
class FaceCall:
    """The face conditioning of one call (or one training step), handed to every face processor.

    ``cache`` memoises per-layer keys/values and resized masks for the call's lifetime; ``None`` disables it
    (training: one UNet pass per step gains nothing, and gradient checkpointing must recompute the same graph).
    """

    regions: tuple[FaceRegion, ...]
    scale: float | None = None  # adapter strength for this call; None = the processors' own (set_ip_adapter_scale)
    cache: dict | None = None

    @property
    def tokens(self) -> torch.Tensor:
        """The first identity's tokens (IdentityNet's input in the single-identity case)."""
        return self.regions[0].tokens


class FaceTokenProjection(MultiIPAdapterImageProjection):
    """``unet.encoder_hid_proj`` for InstantID: diffusers' image projection (the Resampler is its layer 0),
    which lets an already projected :class:`FaceCall` through. Same parameters and state-dict keys as
    diffusers' class; raw embeddings still go through the Resampler, as in any diffusers IP-Adapter."""

    def forward(self, image_embeds: FaceCall | list[torch.Tensor]) -> list:
        if isinstance(image_embeds, FaceCall):
            return [image_embeds]
        return super().forward(image_embeds)


class FaceAttnProcessor(IPAdapterAttnProcessor2_0):
    """IP-Adapter attention whose image branch reads a per-call :class:`FaceCall` (regions, scale, cache)."""

    @classmethod
    def adopt(cls, processor: IPAdapterAttnProcessor2_0) -> FaceAttnProcessor:
        """Wrap a loaded diffusers IP-Adapter processor, sharing (not copying) its weights."""
        with torch.device("meta"):
            face = cls(processor.hidden_size, processor.cross_attention_dim, processor.num_tokens, processor.scale)
        face.to_k_ip = processor.to_k_ip
        face.to_v_ip = processor.to_v_ip
        return face

    @staticmethod
    def _cached(call: FaceCall, key: object, make):
        if call.cache is None:
            return make()
        if key not in call.cache:
            call.cache[key] = make()
        return call.cache[key]

    @staticmethod
    def _region_weights(mask: torch.Tensor, num_queries: int, like: torch.Tensor) -> torch.Tensor:
        """The mask at this layer's resolution as (1, num_queries, 1), resized as the published code does
        (nearest, by the area ratio between the image and this layer's token grid)."""
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
        call = None
        if isinstance(encoder_hidden_states, tuple) and len(self.scale) == 1 and ip_adapter_masks is None:
            text_states, (face,) = encoder_hidden_states
            if isinstance(face, FaceCall):
                call = face
            elif face.ndim == 4 and face.shape[1] == 1:  # raw embeddings projected by the UNet, one image each
                call = FaceCall((FaceRegion(face[:, 0]),))
        # Anything but InstantID's own single-adapter call goes to diffusers unchanged.
        if call is None:
            return super().__call__(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, scale, ip_adapter_masks
            )
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
        ip_scale = self.scale[0] if call.scale is None else call.scale
        if ip_scale != 0:
            face_out = None
            for index, region in enumerate(call.regions):
                face_k, face_v = self._cached(
                    call, (id(self), "kv", index, batch_size),
                    lambda r=region: (heads(self.to_k_ip[0](r.tokens)), heads(self.to_v_ip[0](r.tokens))),
                )
                face = merge(F.scaled_dot_product_attention(q, face_k, face_v))
                if region.mask is not None:
                    face = face * self._cached(
                        call, ("mask", index, num_queries),
                        lambda r=region, like=face: self._region_weights(r.mask, num_queries, like),
                    )
                face_out = face if face_out is None else face_out + face
            out = torch.add(out, face_out, alpha=ip_scale)

        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def face_processors(unet: torch.nn.Module) -> list[FaceAttnProcessor]:
    """The InstantID processors installed in ``unet`` (empty when no face adapter is loaded)."""
    return [p for p in unet.attn_processors.values() if isinstance(p, FaceAttnProcessor)]


def adopt_face_layers(unet: torch.nn.Module, scale: float) -> None:
    """After diffusers loaded an IP-Adapter into ``unet``: give each of its cross-attention layers the
    per-call face processor and let the image projection pass precomputed face tokens through. Both share
    the loaded weights; nothing is copied, and nothing here changes again per call."""
    processors = {}
    for name, proc in unet.attn_processors.items():
        if isinstance(proc, IPAdapterAttnProcessor2_0) and not isinstance(proc, FaceAttnProcessor):
            proc = FaceAttnProcessor.adopt(proc)
            proc.scale = [scale]
        processors[name] = proc
    unet.set_attn_processor(processors)
    projection = unet.encoder_hid_proj
    if not isinstance(projection, FaceTokenProjection):
        unet.encoder_hid_proj = FaceTokenProjection(list(projection.image_projection_layers))
