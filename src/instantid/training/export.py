"""Write trained weights in the published InstantID layout: ``ip-adapter.bin`` and ``ControlNetModel/``.

Inside diffusers the Resampler is an ``IPAdapterPlusImageProjection`` with diffusers' own parameter names;
the published file uses the names of IP-Adapter-Plus' original ``Resampler``. :func:`resampler_to_published`
is the exact inverse of diffusers' ``_convert_ip_adapter_image_proj_to_diffusers`` for that case, so an
exported file loads into the published code, into diffusers' ``load_ip_adapter`` and into ours alike.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import torch
from diffusers import ControlNetModel
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

from instantid.errors import IncompatibleWeightsError, InvalidInputError, MissingWeightsError

ADAPTER_FILES = ("ip-adapter.bin", "ip-adapter.safetensors")
IDENTITYNET_FOLDER = "ControlNetModel"

# diffusers name (per Resampler layer) -> published name; ``to_k``/``to_v`` are concatenated into ``to_kv``.
_LAYER_RENAMES = {
    "ln0": "0.norm1",
    "ln1": "0.norm2",
    "attn.to_q": "0.to_q",
    "attn.to_out.0": "0.to_out",
    "ff.0": "1.0",
    "ff.1.net.0.proj": "1.1",
    "ff.1.net.2": "1.3",
}
_LAYER_PARAM = re.compile(r"^layers\.(\d+)\.(.+)\.(weight|bias)$")
_TOP_LEVEL = {"latents", "proj_in.weight", "proj_in.bias", "proj_out.weight", "proj_out.bias",
              "norm_out.weight", "norm_out.bias"}


def resampler_to_published(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``IPAdapterPlusImageProjection`` state dict -> published ``image_proj`` names.

    Every key must be understood: an unknown one means diffusers changed the module, and a silently
    dropped tensor would make a checkpoint that loads but does not work.
    """
    out: dict[str, torch.Tensor] = {}
    pending_kv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        value = value.detach().to("cpu").contiguous()
        if key in _TOP_LEVEL:
            out[key] = value
            continue
        match = _LAYER_PARAM.match(key)
        if match is None:
            raise IncompatibleWeightsError(f"unexpected Resampler parameter {key!r}: cannot export it")
        layer, module, kind = match.groups()
        if module in ("attn.to_k", "attn.to_v"):
            pending_kv.setdefault(f"layers.{layer}.0.to_kv.{kind}", {})[module[-1]] = value
        elif module in _LAYER_RENAMES:
            out[f"layers.{layer}.{_LAYER_RENAMES[module]}.{kind}"] = value
        else:
            raise IncompatibleWeightsError(f"unexpected Resampler parameter {key!r}: cannot export it")
    for key, parts in pending_kv.items():
        if set(parts) != {"k", "v"}:
            raise IncompatibleWeightsError(f"Resampler has only one of to_k/to_v for {key!r}")
        out[key] = torch.cat([parts["k"], parts["v"]], dim=0)
    return out


def adapter_state_dict(unet: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """The face adapter installed in ``unet`` as ``{"image_proj": ..., "ip_adapter": ...}`` (published names).

    Decoupled weights are numbered by the processor's position in ``unet.attn_processors``, as published.
    """
    projection = getattr(unet, "encoder_hid_proj", None)
    if projection is None or not hasattr(projection, "image_projection_layers"):
        raise IncompatibleWeightsError("this UNet has no face adapter installed (no encoder_hid_proj)")
    resampler = projection.image_projection_layers[0]
    ip: dict[str, torch.Tensor] = {}
    for n, proc in enumerate(unet.attn_processors.values()):
        if isinstance(proc, IPAdapterAttnProcessor2_0):
            ip[f"{n}.to_k_ip.weight"] = proc.to_k_ip[0].weight.detach().to("cpu").contiguous()
            ip[f"{n}.to_v_ip.weight"] = proc.to_v_ip[0].weight.detach().to("cpu").contiguous()
    return {"image_proj": resampler_to_published(resampler.state_dict()), "ip_adapter": ip}


def save_adapter(
    unet: torch.nn.Module, path: str | Path, embedding_space: str, dtype: torch.dtype = torch.float16
) -> Path:
    """Write the adapter of ``unet`` to ``path`` (``.bin``: torch pickle; ``.safetensors``: flat keys).

    The file records the face-embedding space so that a loader can refuse embeddings of another face model;
    only tensors and strings go in, so ``torch.load(weights_only=True)`` reads it. fp16 as published.
    """
    path = Path(path)
    state = adapter_state_dict(unet)
    for group in state.values():
        for key in group:
            group[key] = group[key].to(dtype)
    dim = state["image_proj"]["proj_in.weight"].shape[1]
    meta = {"embedding_space": embedding_space, "embedding_dim": str(dim)}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")  # never leave a half-written file under the real name
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        flat = {f"{group}.{key}": t for group, tensors in state.items() for key, t in tensors.items()}
        save_file(flat, str(partial), metadata=meta)
    else:
        torch.save({**state, "meta": meta}, partial)
    partial.replace(path)
    return path


def export_release(
    unet: torch.nn.Module, identitynet: ControlNetModel, out_dir: str | Path, embedding_space: str,
    adapter_format: str = "bin", dtype: torch.dtype = torch.float16,
) -> Path:
    """Write ``out_dir/ip-adapter.{bin,safetensors}`` and ``out_dir/ControlNetModel/`` (published layout)."""
    if adapter_format not in ("bin", "safetensors"):
        raise InvalidInputError(f"adapter format must be 'bin' or 'safetensors', got {adapter_format!r}")
    out = Path(out_dir)
    save_adapter(unet, out / f"ip-adapter.{adapter_format}", embedding_space, dtype)
    # A cast copy: the caller's (training) module keeps its dtype; the published IdentityNet is fp16.
    copy.deepcopy(identitynet).to(dtype).save_pretrained(out / IDENTITYNET_FOLDER, safe_serialization=True)
    return out


def run_checkpoints(run: str | Path) -> list[Path]:
    """A training run's ``checkpoint-N`` folders, oldest (smallest N) first."""
    found = [(int(m.group(1)), p) for p in Path(run).glob("checkpoint-*")
             if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name))]
    return [p for _, p in sorted(found)]


def find_checkpoint(folder: str | Path) -> Path:
    """``folder`` itself when it is a checkpoint, else the latest checkpoint of the run ``folder``; anything else
    is one error saying which folder to give."""
    folder = Path(folder)
    if (folder / "train_config.json").is_file():
        found = run_checkpoints(folder)
        if found:
            return found[-1]
        raise MissingWeightsError(f"the training run {folder} has no checkpoint-N folder yet (its final weights are "
                                  f"in {folder / 'release'} once training ends)")
    if (folder.parent / "train_config.json").is_file():
        return folder
    raise InvalidInputError(f"{folder} is neither a training run (a folder with train_config.json) nor one of its "
                            "checkpoint-N folders: give the run's --output-dir or run/checkpoint-N")


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, adapter_format: str = "bin") -> Path:
    """Export a training checkpoint folder (``run/checkpoint-N``, or a run folder: its latest checkpoint) to the
    published layout.

    The run's ``train_config.json`` (next to the checkpoint) says which base model and sizes to rebuild.
    """
    from instantid.training.config import TrainConfig
    from instantid.training.model import build_modules

    checkpoint = find_checkpoint(checkpoint)
    config_path = checkpoint.parent / "train_config.json"
    config = TrainConfig.load(config_path)
    modules = build_modules(config)
    modules.net.load_trainable(checkpoint)
    return export_release(modules.net.unet, modules.net.identitynet, out_dir, config.embedding_space, adapter_format)
