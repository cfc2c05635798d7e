"""Decoupled cross-attention with InstantID's face regions, fed per call.

diffusers' ``IPAdapterAttnProcessor2_0`` implements the image adapter of the paper,
``out = Attn(q, K_text, V_text) + scale * Attn(q, to_k_ip(tokens), to_v_ip(tokens))``, and its weight layout
is the published one; :class:`FaceAttnProcessor` keeps that layout and math and holds only those weights.
Everything that varies per call travels in one :class:`FaceCall` value:

* the face tokens of each identity and its region mask. One identity without a mask is the published
  pipeline; one with a mask is its "enhance non-face region" (the published code kept that mask in a
  module-level global, so one masked call leaked into every later call); several identities each act only
  inside their own region (the paper's multi-identity synthesis);
* :class:`PreparedFaces`, made once per call by :func:`prepare_faces` before the sampling loop: every face
  layer's keys and values (the adapter scale folded into the values: attention is linear in V) and each
  region's weights at every token-grid size. The face tokens do not change between denoising steps, so a step
  only runs one extra attention and one fused add per face layer: on a fast GPU SDXL is launch-bound, and
  fewer small operators per step is speed. Prepared data are plain tensors in a frozen value, read and never
  written inside the UNet, so ``torch.compile`` traces a face layer without a graph break, and a new face,
  mask or scale is new tensor *values*, not a new graph (see :mod:`instantid.speed.fast`).

The value reaches the processors through diffusers' own channel for image conditioning: the pipeline passes
it as ``added_cond_kwargs["image_embeds"]``, the UNet hands it to its image projection,
:class:`FaceTokenProjection` passes it through unchanged (it is already projected), and the UNet gives it to
every cross-attention processor as the image half of ``encoder_hidden_states``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0
from diffusers.models.embeddings import MultiIPAdapterImageProjection

LayerGroup = tuple[int, int]  # (heads, width): face layers whose keys/values share one shape


@dataclass(frozen=True)
class FaceRegion:
    """One identity's face tokens and where they act."""

    tokens: torch.Tensor  # (B, Q, D): Resampler output, the UNet's batch (negative half first under guidance)
    mask: torch.Tensor | None = None  # (H, W) in [0, 1] at output-image resolution; None = everywhere


@dataclass(frozen=True)
class PreparedFaces:
    """Every face layer's inputs for one call, computed once before the sampling loop (:func:`prepare_faces`).

    Layers of one shape are stacked so that a compiled block finds its own by a tensor index (a Python index
    would be a constant to ``torch.compile``, and every block would get a graph of its own). Empty ``keys``:
    every adapter scale is 0, and the face branch is skipped.
    """

    keys: dict[LayerGroup, torch.Tensor]  # (R, L, B, H, Q, d): region, layer of the group, batch, heads, token
    values: dict[LayerGroup, torch.Tensor]  # the same, already multiplied by each layer's adapter scale
    weights: tuple[dict[int, torch.Tensor] | None, ...]  # per region: token count -> (1, 1, N, 1); None = everywhere
    # The same keys/values as views per group, layer and region: eager steps index tuples, not tensors.
    views: dict[LayerGroup, tuple[tuple[tuple[torch.Tensor, torch.Tensor], ...], ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class PreparedStyle:
    """A style reference's keys and values at every style layer for one call (InstantStyle, made by
    :func:`instantid.core.style.prepare_style`): a standard IP-Adapter's branch,
    ``out + scale * Attn(q, to_k_ip[1](style tokens), to_v_ip[1](style tokens))``, as diffusers computes it."""

    kv: tuple[tuple[torch.Tensor, torch.Tensor] | None, ...]  # per style layer: (B', H, T, d) keys, values; None at 0
    scales: tuple[float, ...]  # per style layer, this call's scale; 0 = the branch is skipped there


@dataclass(frozen=True)
class FaceCall:
    """The face conditioning of one call (or one training step), handed to every face processor.

    ``prepared`` holds the per-call keys/values and region weights (the pipeline's sampling path); without it
    each layer projects the tokens itself (training: one UNet pass per step gains nothing from preparing, and
    gradients must flow into the projections). ``cache`` memoises the IdentityNet residual masks of the call
    (:mod:`instantid.core.denoise`); ``None`` disables it.
    """

    regions: tuple[FaceRegion, ...]
    scale: float | None = None  # adapter strength for this call; None = the processors' own (set_ip_adapter_scale)
    cache: dict | None = None
    prepared: PreparedFaces | None = None
    style: PreparedStyle | None = None  # a style reference image's branch (InstantStyle); None = no style

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


def halve(h: int, w: int) -> tuple[int, int]:
    """A grid after one stride-2, padding-1 convolution (the VAE's and the UNet's down-samplers): ceil."""
    return (h + 1) // 2, (w + 1) // 2


def grid_shape(size: tuple[int, int], num_queries: int) -> tuple[int, int]:
    """The (rows, columns) of the ``num_queries``-token grid that a picture of ``size`` = (H, W) reaches in the
    UNet. The VAE and every UNet down-sampler are stride-2, padding-1 convolutions, so each halving rounds up:
    an H x W picture (H, W multiples of the VAE's stride) has latent ``H/8 x W/8`` and grids
    ``ceil(h/2) x ceil(w/2)`` below it. This is the only rule that holds for latents of odd size."""
    h, w = size
    while h * w > num_queries and (h > 1 or w > 1):
        h, w = halve(h, w)
    if h * w != num_queries:
        raise ValueError(
            f"no attention grid of {num_queries} tokens lies below a {size[1]}x{size[0]} picture; "
            "the mask must have the output image's size"
        )
    return h, w


def region_weights(mask: torch.Tensor, grid: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """A region mask at one attention layer's (rows, columns) grid as (1, 1, rows*columns, 1), nearest.

    The published code scales the mask by the area ratio between image and grid; that is kept bit for bit
    wherever it lands on the grid, and replaced by the grid's own size where it does not (a latent side that
    is not a multiple of the UNet's total down-sampling, e.g. 1000 px wide: 125 -> 63 -> 32 columns, where
    the area ratio rounds to 62)."""
    h, w = mask.shape
    rows, columns = grid
    scale = 1 / (h * w / (rows * columns)) ** 0.5
    if (int(h * scale), int(w * scale)) == (rows, columns):  # the size torch makes of that scale factor
        small = F.interpolate(mask[None, None].to(like), scale_factor=scale, mode="nearest")
    else:
        small = F.interpolate(mask[None, None].to(like), size=(rows, columns), mode="nearest")
    return small.reshape(1, 1, -1, 1)


def mask_weights(mask: torch.Tensor, num_queries: int, like: torch.Tensor) -> torch.Tensor:
    """:func:`region_weights` at the grid of ``num_queries`` tokens below the mask's picture."""
    return region_weights(mask, grid_shape(tuple(mask.shape), num_queries), like)


class FaceAttnProcessor(IPAdapterAttnProcessor2_0):
    """IP-Adapter attention whose image branch reads a per-call :class:`FaceCall` (regions, scale, prepared
    keys/values)."""

    face_index: int  # this layer's place in its group's stacks (eager reads this)
    face_slot: torch.Tensor  # the same as a (1,) buffer (compiled graphs read this: no constant per block)
    # With a style adapter installed here (core/style.py): its place in PreparedStyle; its weights are the
    # second IP-Adapter of this layer (to_k_ip[1], to_v_ip[1]), diffusers' layout for several adapters.
    style_index: int | None = None

    @classmethod
    def adopt(cls, processor: IPAdapterAttnProcessor2_0) -> FaceAttnProcessor:
        """Wrap a loaded diffusers IP-Adapter processor, sharing (not copying) its weights."""
        with torch.device("meta"):
            face = cls(processor.hidden_size, processor.cross_attention_dim, processor.num_tokens, processor.scale)
        face.to_k_ip = processor.to_k_ip
        face.to_v_ip = processor.to_v_ip
        device = processor.to_k_ip[0].weight.device
        # Not persistent: a layer number is no weight, and the UNet's state dict stays diffusers'.
        face.register_buffer("face_slot", torch.zeros(1, dtype=torch.long, device=device), persistent=False)
        face.face_index = 0
        return face

    def group(self, attn: Attention) -> LayerGroup:
        return attn.heads, self.hidden_size

    def _face_kv(self, prepared: PreparedFaces, group: LayerGroup, region: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's (B, H, Q, d) keys and values for one region."""
        if torch.compiler.is_compiling():
            keys, values = prepared.keys[group][region], prepared.values[group][region]
            slot = self.face_slot.to(keys.device)
            return keys.index_select(0, slot)[0], values.index_select(0, slot)[0]
        return prepared.views[group][self.face_index][region]

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
        if isinstance(encoder_hidden_states, tuple) and ip_adapter_masks is None:
            text_states, images = encoder_hidden_states
            if len(images) == 1 and isinstance(images[0], FaceCall):
                call = images[0]
            elif len(images) == len(self.scale) == 1 and images[0].ndim == 4 and images[0].shape[1] == 1:
                call = FaceCall((FaceRegion(images[0][:, 0]),))  # raw embeddings projected by the UNet, one image each
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

        q = heads(query)
        # Text and face attention are summed per head and merged once (the merge is a permutation, so the
        # sums are the published ones, element for element).
        out = F.scaled_dot_product_attention(
            q, heads(attn.to_k(text_states)), heads(attn.to_v(text_states)), attn_mask=attention_mask
        )
        prepared = call.prepared
        if prepared is None:
            out = self._faces_unprepared(call, q, out, heads, num_queries)
        elif prepared.keys:
            group = self.group(attn)
            for index, weights in enumerate(prepared.weights):
                face = F.scaled_dot_product_attention(q, *self._face_kv(prepared, group, index))
                if weights is None:
                    out = out + face
                else:
                    w = weights.get(num_queries)
                    if w is None:  # a grid prepare_faces did not foresee: resize here (same result)
                        w = mask_weights(call.regions[index].mask, num_queries, face)
                    out = torch.addcmul(out, face, w)  # one fused multiply-add
        if call.style is not None and self.style_index is not None and call.style.scales[self.style_index]:
            # diffusers' IP-Adapter term, `hidden + scale * Attn(q, K, V)`, summed per head (the same elements).
            keys, values = call.style.kv[self.style_index]
            out = out + call.style.scales[self.style_index] * F.scaled_dot_product_attention(q, keys, values)

        out = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _faces_unprepared(self, call: FaceCall, q: torch.Tensor, out: torch.Tensor, heads, num_queries: int):
        """The face branch projecting the tokens in this layer (training, raw embeddings)."""
        ip_scale = self.scale[0] if call.scale is None else call.scale
        if ip_scale == 0:
            return out
        face_out = None
        for region in call.regions:
            face = F.scaled_dot_product_attention(
                q, heads(self.to_k_ip[0](region.tokens)), heads(self.to_v_ip[0](region.tokens))
            )
            if region.mask is not None:
                face = face * mask_weights(region.mask, num_queries, face)
            face_out = face if face_out is None else face_out + face
        return torch.add(out, face_out, alpha=ip_scale)


def face_processors(unet: torch.nn.Module) -> list[FaceAttnProcessor]:
    """The InstantID processors installed in ``unet`` (empty when no face adapter is loaded)."""
    return [p for p in unet.attn_processors.values() if isinstance(p, FaceAttnProcessor)]


def _face_layers(unet: torch.nn.Module) -> dict[LayerGroup, list[FaceAttnProcessor]]:
    """The face layers of ``unet`` by group, in module order (the face adapter is each one's first adapter); numbers
    each layer in its group (the numbers only change when the processors were swapped since the last call)."""
    groups: dict[LayerGroup, list[FaceAttnProcessor]] = {}
    for module in unet.modules():
        proc = getattr(module, "processor", None) if isinstance(module, Attention) else None
        if isinstance(proc, FaceAttnProcessor):
            members = groups.setdefault(proc.group(module), [])
            if proc.face_index != len(members):
                proc.face_index = len(members)
                proc.face_slot.fill_(len(members))
            members.append(proc)
    return groups


def _project(linear: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``linear(tokens)`` on the tokens' device. Under model CPU offload the idle UNet sits in RAM: its
    weight is brought over for this one product (a few MB) rather than computing in RAM."""
    weight = getattr(linear, "weight", None)
    if weight is None or weight.device.type == "meta" or weight.device == tokens.device:
        return linear(tokens)  # meta: accelerate's hook brings the weight
    bias = None if linear.bias is None else linear.bias.to(tokens.device)
    return F.linear(tokens, weight.to(tokens.device), bias)


def token_grids(latent_size: tuple[int, int], levels: int) -> list[tuple[int, int]]:
    """(rows, columns) of the UNet's attention grids for a latent of ``latent_size``: each level halves the
    grid (a stride-2, padding-1 convolution: ceil)."""
    h, w = latent_size
    grids = []
    for _ in range(levels):
        grids.append((h, w))
        h, w = halve(h, w)
    return grids


def prepare_faces(unet: torch.nn.Module, call: FaceCall, latent_size: tuple[int, int]) -> FaceCall:
    """``call`` with every face layer's keys/values (scale folded into the values) and each region's weights
    at every grid of a ``latent_size`` latent, computed once for the whole sampling loop."""
    groups = _face_layers(unet)
    scales = {id(p): (p.scale[0] if call.scale is None else call.scale) for ps in groups.values() for p in ps}
    if not any(scales.values()):
        return dataclasses.replace(call, prepared=PreparedFaces({}, {}, ()))
    tokens = torch.stack([region.tokens for region in call.regions])  # (R, B, Q, D)
    regions, batch, count, _ = tokens.shape
    keys, values = {}, {}
    for (heads, width), members in groups.items():

        def split(x: torch.Tensor, heads: int = heads, width: int = width) -> torch.Tensor:
            return x.reshape(regions, batch, count, heads, width // heads).transpose(2, 3)

        keys[heads, width] = torch.stack([split(_project(p.to_k_ip[0], tokens)) for p in members], dim=1)
        values[heads, width] = torch.stack(
            [split(_project(p.to_v_ip[0], tokens) * scales[id(p)]) for p in members], dim=1
        )
    grids = token_grids(latent_size, len(getattr(unet.config, "block_out_channels", ())) or 1)
    weights = []
    for region in call.regions:
        if region.mask is None:
            weights.append(None)
            continue
        like = tokens.new_empty(())
        weights.append({rows * columns: region_weights(region.mask, (rows, columns), like) for rows, columns in grids})
    views = {
        group: tuple(tuple(zip(keys[group][:, i].unbind(0), values[group][:, i].unbind(0), strict=True))
                     for i in range(keys[group].shape[1]))
        for group in keys
    }
    return dataclasses.replace(call, prepared=PreparedFaces(keys, values, tuple(weights), views))


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
    _face_layers(unet)  # number the layers now, so the first call does not
    projection = unet.encoder_hid_proj
    if not isinstance(projection, FaceTokenProjection):
        unet.encoder_hid_proj = FaceTokenProjection(list(projection.image_projection_layers))
