"""The face adapter checkpoint (``ip-adapter.bin``): reading, checking and installing it into a UNet.

Layout (published): ``{"image_proj": Resampler state dict, "ip_adapter": {"<n>.to_k_ip.weight", ...}}`` where
``n`` = 1, 3, 5, ... is the position of each cross-attention processor in ``unet.attn_processors``. A
``.safetensors`` file holds the same tensors under ``image_proj.*`` / ``ip_adapter.*``. Checkpoints written
by our trainer also record the face-embedding space they expect (``embedding_space`` in the safetensors
metadata, or a ``"meta"`` dict of strings in the pickle), which the published loader simply ignores.

All sizes are read from tensor shapes; nothing is assumed beyond the published head size of 64.
"""

from __future__ import annotations

import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from instantid.core.attention import adopt_face_layers
from instantid.errors import IncompatibleWeightsError, MissingWeightsError

HEAD_DIM = 64
PUBLISHED_FILES = "the published face adapter is ip-adapter.bin in the InstantX/InstantID model repository"
_RESAMPLER_KEYS = ("latents", "proj_in.weight", "proj_out.weight", "norm_out.weight", "norm_out.bias")
_LAYER_KEY = re.compile(r"^layers\.(\d+)\.0\.to_q\.weight$")
_IP_KEY = re.compile(r"^(\d+)\.to_([kv])_ip\.weight$")


@dataclass(frozen=True)
class AdapterSpec:
    """Sizes of a face adapter, all derived from its tensors."""

    width: int  # Resampler width (published 1280)
    depth: int  # Resampler layers (published 4)
    heads: int  # width // 64 (published 20)
    num_queries: int  # face tokens per image (published 16)
    embedding_dim: int  # face-embedding size it reads (antelopev2: 512)
    output_dim: int  # token width = UNet cross-attention width (SDXL: 2048)
    num_layers: int  # decoupled cross-attention layers (SDXL: 70)
    embedding_space: str | None  # e.g. "antelopev2-512", when the checkpoint records it


def load_adapter_state_dict(
    path: str | Path, kind: str = "face adapter", where: str = PUBLISHED_FILES,
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, str]]:
    """Read an adapter file into ``({"image_proj": ..., "ip_adapter": ...}, metadata)``; ``kind`` and ``where``
    name the adapter and its published files in errors (the style adapter has the same layout).

    Pickles are opened with ``weights_only=True``: an adapter is data, never code.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"{kind} file not found: {path} ({where})")
    metadata: dict[str, str] = {}
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            state: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = dict(f.metadata() or {})
                for key in f.keys():
                    group, _, name = key.partition(".")
                    if group in state:
                        state[group][name] = f.get_tensor(key)
        else:
            with warnings.catch_warnings():
                # The published ip-adapter.bin is an old-protocol pickle; torch's note about it helps nobody.
                warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
                raw = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(raw, dict):
                raise IncompatibleWeightsError(
                    f"{kind} {path} holds a {type(raw).__name__}, expected a dict with "
                    "'image_proj' and 'ip_adapter'"
                )
            meta = raw.get("meta", {})
            metadata = {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}
            state = {k: raw[k] for k in ("image_proj", "ip_adapter") if k in raw}
    except pickle.UnpicklingError as exc:
        # PyTorch's message advises retrying with weights_only=False; never pass that advice on.
        raise IncompatibleWeightsError(
            f"cannot load {kind} {path}: not a plain weights file (it asks to run pickled code, which is "
            "never done)"
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise IncompatibleWeightsError(f"cannot load {kind} {path}: {reason}") from exc
    missing = [k for k in ("image_proj", "ip_adapter") if not state.get(k)]
    if missing:
        raise IncompatibleWeightsError(
            f"{kind} {path} lacks {', '.join(repr(m) for m in missing)}: expected the published layout "
            "with 'image_proj' (image projection) and 'ip_adapter' (to_k_ip/to_v_ip weights)"
        )
    return state, metadata


def inspect_adapter(state: dict[str, dict[str, torch.Tensor]], source: str, metadata: dict[str, str]) -> AdapterSpec:
    """Derive an :class:`AdapterSpec` from tensor shapes, refusing incomplete checkpoints."""
    proj = state["image_proj"]
    absent = [k for k in _RESAMPLER_KEYS if k not in proj]
    if absent:
        raise IncompatibleWeightsError(
            f"face adapter {source}: 'image_proj' lacks {', '.join(absent)} (not an InstantID Resampler)"
        )
    depth = sum(1 for k in proj if _LAYER_KEY.match(k))
    width = proj["latents"].shape[2]
    if depth == 0 or width % HEAD_DIM:
        raise IncompatibleWeightsError(
            f"face adapter {source}: Resampler has {depth} layers and width {width}; expected >= 1 layer "
            f"and a width divisible by {HEAD_DIM}"
        )
    layer_ids = sorted({int(m.group(1)) for k in state["ip_adapter"] if (m := _IP_KEY.match(k))})
    return AdapterSpec(
        width=width,
        depth=depth,
        heads=width // HEAD_DIM,
        num_queries=proj["latents"].shape[1],
        embedding_dim=proj["proj_in.weight"].shape[1],
        output_dim=proj["proj_out.weight"].shape[0],
        num_layers=len(layer_ids),
        embedding_space=metadata.get("embedding_space"),
    )


def _cross_attention_layers(unet: torch.nn.Module) -> list[tuple[int, str, int]]:
    """``(n, processor name, hidden size)`` of each cross-attention layer, numbered as the checkpoint is."""
    layers = []
    for n, name in enumerate(unet.attn_processors):
        if name.endswith("attn2.processor"):
            attn = unet.get_submodule(name[: -len(".processor")])
            layers.append((n, name, attn.to_q.out_features))
    return layers


def check_fits_unet(state: dict, spec: AdapterSpec, unet: torch.nn.Module, source: str) -> None:
    """Refuse an adapter whose shapes do not fit ``unet`` with a message that says why."""
    cross_dim = unet.config.cross_attention_dim
    if spec.output_dim != cross_dim:
        raise IncompatibleWeightsError(
            f"face adapter {source} makes {spec.output_dim}-d face tokens but this UNet's cross-attention is "
            f"{cross_dim}-d (an adapter for another base model, e.g. SD1.5 on SDXL?)"
        )
    layers = _cross_attention_layers(unet)
    weights = state["ip_adapter"]
    for n, name, hidden in layers:
        for kind in ("k", "v"):
            key = f"{n}.to_{kind}_ip.weight"
            if key not in weights:
                raise IncompatibleWeightsError(
                    f"face adapter {source} has no '{key}' for {name}: it was made for a UNet with "
                    f"{spec.num_layers} cross-attention layers, this one has {len(layers)}"
                )
            if tuple(weights[key].shape) != (hidden, cross_dim):
                raise IncompatibleWeightsError(
                    f"face adapter {source}: '{key}' has shape {tuple(weights[key].shape)}, "
                    f"this UNet needs ({hidden}, {cross_dim})"
                )
    if spec.num_layers != len(layers):
        raise IncompatibleWeightsError(
            f"face adapter {source} has {spec.num_layers} cross-attention layers, this UNet has {len(layers)}"
        )


# diffusers keeps its UNet-level IP-Adapter loader private (the public ``load_ip_adapter`` is a pipeline
# method). Training has a bare UNet and no pipeline, so it calls the private loader; this guard turns a
# future rename into one clear line instead of an AttributeError deep in training.
_PRIVATE_UNET_LOADER = "_load_ip_adapter_weights"


def install_face_adapter(unet: torch.nn.Module, state: dict, scale: float) -> None:
    """Load the adapter into a bare UNet (training, export checks) with diffusers' IP-Adapter machinery,
    then adopt its layers for InstantID. Pipelines use the public ``load_ip_adapter`` instead (see
    ``InstantIDMixin.load_ip_adapter_instantid``); both end in the same modules. The Resampler becomes
    ``unet.encoder_hid_proj``, so ``.to()``, CPU offload and ``save_pretrained`` all see it."""
    loader = getattr(unet, _PRIVATE_UNET_LOADER, None)
    if loader is None:
        import diffusers

        raise IncompatibleWeightsError(
            f"diffusers {diffusers.__version__} has no UNet2DConditionModel.{_PRIVATE_UNET_LOADER}, which "
            "InstantID training uses to install the face adapter: install a diffusers release from 0.32 to 0.42"
        )
    # low_cpu_mem_usage=False keeps the dtype of the UNet (diffusers' meta path takes the checkpoint's dtype).
    loader([state], low_cpu_mem_usage=False)
    adopt_face_layers(unet, scale)
    unet.encoder_hid_proj.adapter_spec = inspect_adapter(state, "in-memory adapter", {})


def random_adapter_state_dict(
    unet: torch.nn.Module, width: int = 1280, depth: int = 4, num_queries: int = 16, embedding_dim: int = 512,
    seed: int = 0, std: float = 0.02,
) -> dict[str, dict[str, torch.Tensor]]:
    """A freshly initialised face adapter for ``unet`` in the published layout (training start, tiny demos).

    Linear weights ~ N(0, std), LayerNorms at identity, queries ~ N(0, 1/width) as in IP-Adapter-Plus.
    """
    gen = torch.Generator().manual_seed(seed)
    cross_dim = unet.config.cross_attention_dim

    def normal(*shape: int, scale: float = std) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * scale

    proj: dict[str, torch.Tensor] = {
        "latents": normal(1, num_queries, width, scale=width**-0.5),
        "proj_in.weight": normal(width, embedding_dim),
        "proj_in.bias": torch.zeros(width),
        "proj_out.weight": normal(cross_dim, width),
        "proj_out.bias": torch.zeros(cross_dim),
        "norm_out.weight": torch.ones(cross_dim),
        "norm_out.bias": torch.zeros(cross_dim),
    }
    for i in range(depth):
        for norm in ("norm1", "norm2"):
            proj[f"layers.{i}.0.{norm}.weight"] = torch.ones(width)
            proj[f"layers.{i}.0.{norm}.bias"] = torch.zeros(width)
        proj[f"layers.{i}.0.to_q.weight"] = normal(width, width)
        proj[f"layers.{i}.0.to_kv.weight"] = normal(2 * width, width)
        proj[f"layers.{i}.0.to_out.weight"] = normal(width, width)
        proj[f"layers.{i}.1.0.weight"] = torch.ones(width)
        proj[f"layers.{i}.1.0.bias"] = torch.zeros(width)
        proj[f"layers.{i}.1.1.weight"] = normal(4 * width, width)
        proj[f"layers.{i}.1.3.weight"] = normal(width, 4 * width)
    ip = {}
    for n, _, hidden in _cross_attention_layers(unet):
        ip[f"{n}.to_k_ip.weight"] = normal(hidden, cross_dim, scale=cross_dim**-0.5)
        ip[f"{n}.to_v_ip.weight"] = normal(hidden, cross_dim, scale=cross_dim**-0.5)
    return {"image_proj": proj, "ip_adapter": ip}
