"""Loading the diffusion side of InstantID: SDXL base + IdentityNet + face adapter, device, dtype, sampler, LoRA.

:func:`load_pipeline` turns model references (paths or Hub ids, see :mod:`instantid.models`) into a ready
:class:`~instantid.pipeline.StableDiffusionXLInstantIDPipeline`; every failure is a typed one-line error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from instantid.errors import InvalidInputError
from instantid.model_settings import torch_dtype
from instantid.settings import SCHEDULERS


def pick_device(device: str | None) -> str:
    """The device to run on: the one asked for (checked), else cuda, else mps, else cpu."""
    if device:
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(dtype: str | None, device: str) -> torch.dtype:
    if dtype is None:
        return torch.float16 if device.split(":")[0] in ("cuda", "mps") else torch.float32
    return torch_dtype(dtype)


def make_scheduler(config: Any, name: str) -> Any:
    """A scheduler of the named kind on the base model's noise schedule (``config`` = a scheduler's config)."""
    import diffusers

    if name not in SCHEDULERS:
        raise InvalidInputError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    cls_name, extra, _ = SCHEDULERS[name]
    return getattr(diffusers, cls_name).from_config(config, **extra)


def set_scheduler(pipe: Any, name: str) -> None:
    """Swap the pipeline's scheduler, keeping the base model's noise schedule."""
    pipe.scheduler = make_scheduler(pipe.scheduler.config, name)


def scheduler_name(scheduler: Any) -> str:
    """Our short name of a scheduler instance (``dpm++_karras``), or its class name when it is not in the table."""
    cls = type(scheduler).__name__
    karras = bool(getattr(scheduler.config, "use_karras_sigmas", False))
    for name, (cls_name, extra, _) in SCHEDULERS.items():
        if cls_name == cls and bool(extra.get("use_karras_sigmas", False)) == karras:
            return name
    return cls


def sampler_label(scheduler: Any) -> str:
    """The sampler as A1111-style metadata names it (``DPM++ 2M Karras``), so image sites can read it."""
    name = scheduler_name(scheduler)
    return SCHEDULERS[name][2] if name in SCHEDULERS else name


def load_pipeline(
    base_path: Path, identitynet_path: Path, adapter_path: Path, *, dtype: torch.dtype,
) -> Any:
    """Base + IdentityNet + face adapter as one pipeline, on the CPU in ``dtype``."""
    from diffusers import ControlNetModel

    from instantid.pipeline import StableDiffusionXLInstantIDPipeline

    controlnet = ControlNetModel.from_pretrained(identitynet_path, torch_dtype=dtype)
    if base_path.is_file():
        pipe = StableDiffusionXLInstantIDPipeline.from_single_file(base_path, controlnet=controlnet, torch_dtype=dtype)
    else:
        pipe = StableDiffusionXLInstantIDPipeline.from_pretrained(base_path, controlnet=controlnet, torch_dtype=dtype)
    pipe.load_ip_adapter_instantid(adapter_path)
    return pipe


def load_lora(pipe: Any, ref: str, scale: float = 1.0) -> None:
    """Load a LoRA (file, folder or Hub id), e.g. LCM-LoRA; a name containing 'lcm' also selects the LCM
    scheduler, which few-step LCM generation needs."""
    pipe.load_lora_weights(ref, adapter_name="user")
    pipe.set_adapters(["user"], adapter_weights=[scale])
    if "lcm" in str(ref).lower():
        set_scheduler(pipe, "lcm")
