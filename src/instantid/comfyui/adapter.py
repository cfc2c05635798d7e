"""The face adapter for ComfyUI: the published ``ip-adapter.bin`` (or our ``.safetensors`` exports) as a
Resampler plus one pair of decoupled key/value weights per cross-attention layer of a ComfyUI UNet.

Every size comes from the tensors (:func:`instantid.core.adapter.inspect_adapter`); nothing assumes SDXL. The
checkpoint numbers its layers in diffusers' processor order (down blocks, up blocks, then the middle block);
:func:`cross_attention_layers` walks a ComfyUI UNet in that same order, so the sorted checkpoint numbers pair
with ComfyUI's ``(block, id, transformer index)`` keys one to one, whatever the model's layout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.models.embeddings import IPAdapterPlusImageProjection

from instantid.core.adapter import HEAD_DIM, AdapterSpec, inspect_adapter, load_adapter_state_dict
from instantid.errors import IncompatibleWeightsError

LayerKey = tuple[str, int, int]  # ComfyUI's attn2 patch key: ("input" | "middle" | "output", block id, index)

# Published Resampler name -> diffusers IPAdapterPlusImageProjection name (per layer); the inverse of the
# table in instantid.training.export, which writes published files from diffusers' module.
_TO_DIFFUSERS = {
    "0.norm1": "ln0",
    "0.norm2": "ln1",
    "0.to_q": "attn.to_q",
    "0.to_out": "attn.to_out.0",
    "1.0": "ff.0",
    "1.1": "ff.1.net.0.proj",
    "1.3": "ff.1.net.2",
}
_LAYER_PARAM = re.compile(r"^layers\.(\d+)\.(\d\.\w+)\.(weight|bias)$")
_IP_KEY = re.compile(r"^(\d+)\.to_([kv])_ip\.weight$")


@dataclass(frozen=True)
class CrossAttentionLayer:
    """One cross-attention layer of a ComfyUI UNet, as an attn2 patch addresses it."""

    key: LayerKey
    inner_dim: int  # width of its queries (heads x head size)
    context_dim: int  # width of the tokens it reads


@dataclass(frozen=True)
class FaceAdapter:
    """A loaded face adapter: sizes, the Resampler, and the decoupled weights in checkpoint order."""

    spec: AdapterSpec
    resampler: IPAdapterPlusImageProjection
    weights: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # (to_k_ip, to_v_ip) per layer, (inner, context)
    source: str

    def face_tokens(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, E) face embeddings -> (B, Q, D) tokens, and the negative tokens: the Resampler applied to a zero
        embedding, as the published pipeline's unconditional branch (not zero tokens)."""
        if embeddings.shape[-1] != self.spec.embedding_dim:
            raise IncompatibleWeightsError(
                f"face adapter {self.source} reads {self.spec.embedding_dim}-d face embeddings but the face "
                f"model gave {embeddings.shape[-1]}-d ones: load the face analyzer the adapter was trained with "
                "(antelopev2 for the published adapter)"
            )
        param = next(self.resampler.parameters())
        with torch.no_grad():
            emb = embeddings.to(param.device, param.dtype)[:, None]
            return self.resampler(emb), self.resampler(torch.zeros_like(emb))


def _resampler_state(proj: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Published ``image_proj`` names -> diffusers ``IPAdapterPlusImageProjection`` names."""
    out: dict[str, torch.Tensor] = {}
    for key, value in proj.items():
        match = _LAYER_PARAM.match(key)
        if match is None:
            out[key] = value
            continue
        layer, module, kind = match.groups()
        if module == "0.to_kv":
            k, v = value.chunk(2, dim=0)
            out[f"layers.{layer}.attn.to_k.{kind}"], out[f"layers.{layer}.attn.to_v.{kind}"] = k, v
        elif module in _TO_DIFFUSERS:
            out[f"layers.{layer}.{_TO_DIFFUSERS[module]}.{kind}"] = value
        else:
            raise IncompatibleWeightsError(f"face adapter {source}: unexpected Resampler tensor {key!r}")
    return out


def load_face_adapter(path: str | Path) -> FaceAdapter:
    """Read and check an adapter file (pickles with ``weights_only=True``); sizes from its tensors."""
    state, metadata = load_adapter_state_dict(path)
    source = Path(path).name
    spec = inspect_adapter(state, source, metadata)
    feed_forward = state["image_proj"].get("layers.0.1.1.weight")
    if feed_forward is None:
        raise IncompatibleWeightsError(f"face adapter {source}: its Resampler lacks 'layers.0.1.1.weight'")
    resampler = IPAdapterPlusImageProjection(
        embed_dims=spec.embedding_dim, output_dims=spec.output_dim, hidden_dims=spec.width, depth=spec.depth,
        dim_head=HEAD_DIM, heads=spec.heads, num_queries=spec.num_queries,
        ffn_ratio=feed_forward.shape[0] / spec.width,
    )
    try:
        resampler.load_state_dict(_resampler_state(state["image_proj"], source), strict=True)
    except RuntimeError as exc:
        raise IncompatibleWeightsError(
            f"face adapter {source}: its Resampler tensors do not fit together "
            f"({(str(exc).strip().splitlines() or [type(exc).__name__])[0]})"
        ) from exc
    resampler.eval().requires_grad_(False)
    pairs: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state["ip_adapter"].items():
        match = _IP_KEY.match(key)
        if match is None:
            raise IncompatibleWeightsError(f"face adapter {source}: unexpected tensor 'ip_adapter.{key}'")
        pairs.setdefault(int(match.group(1)), {})[match.group(2)] = value
    incomplete = [n for n, pair in pairs.items() if set(pair) != {"k", "v"}]
    if incomplete:
        raise IncompatibleWeightsError(f"face adapter {source}: layer {incomplete[0]} lacks to_k_ip or to_v_ip")
    weights = tuple((pairs[n]["k"].float(), pairs[n]["v"].float()) for n in sorted(pairs))
    return FaceAdapter(spec=spec, resampler=resampler, weights=weights, source=source)


def cross_attention_layers(diffusion_model: torch.nn.Module) -> list[CrossAttentionLayer]:
    """Every cross-attention layer of a ComfyUI UNet (``openaimodel.UNetModel``) in diffusers' processor order:
    input blocks, output blocks, then the middle block; within a block, transformer by transformer."""
    groups = [("input", getattr(diffusion_model, "input_blocks", None)),
              ("output", getattr(diffusion_model, "output_blocks", None)),
              ("middle", [getattr(diffusion_model, "middle_block", None)])]
    layers = []
    for name, blocks in groups:
        for block_id, block in enumerate(blocks or []):
            for module in block or []:
                for index, transformer in enumerate(getattr(module, "transformer_blocks", [])):
                    attn2 = getattr(transformer, "attn2", None)
                    if attn2 is not None:
                        layers.append(CrossAttentionLayer(
                            (name, block_id, index), attn2.to_q.out_features, attn2.to_k.in_features
                        ))
    return layers


def check_fits(adapter: FaceAdapter, layers: list[CrossAttentionLayer]) -> None:
    """Refuse an adapter that does not fit the model, in one line that says why."""
    if not layers:
        raise IncompatibleWeightsError(
            f"face adapter {adapter.source}: this MODEL has no cross-attention layers a face adapter could patch "
            "(InstantID needs an SDXL-type UNet)"
        )
    if adapter.spec.output_dim != layers[0].context_dim:
        raise IncompatibleWeightsError(
            f"face adapter {adapter.source} makes {adapter.spec.output_dim}-d face tokens but this MODEL's "
            f"cross-attention reads {layers[0].context_dim}-d tokens (an adapter for another base model?)"
        )
    if len(adapter.weights) != len(layers):
        raise IncompatibleWeightsError(
            f"face adapter {adapter.source} has weights for {len(adapter.weights)} cross-attention layers, this "
            f"MODEL has {len(layers)} (an adapter for another base model?)"
        )
    for layer, (k, _) in zip(layers, adapter.weights, strict=True):
        if tuple(k.shape) != (layer.inner_dim, layer.context_dim):
            raise IncompatibleWeightsError(
                f"face adapter {adapter.source}: layer {layer.key} needs ({layer.inner_dim}, {layer.context_dim}) "
                f"weights, the file has {tuple(k.shape)}"
            )
