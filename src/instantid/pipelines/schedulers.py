"""Samplers by our short name (``dpm++_karras``): the diffusers class, its extra config and A1111's label.

Cheap to import (diffusers is imported when a scheduler is made), so the settings schema can list the names.
"""

from __future__ import annotations

import math
from typing import Any

from instantid.errors import InvalidInputError

# Schedulers by our short name: diffusers class, extra config, and the name A1111-style metadata readers know.
SCHEDULERS: dict[str, tuple[str, dict[str, Any], str]] = {
    "euler": ("EulerDiscreteScheduler", {}, "Euler"),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}, "Euler a"),
    "dpm++": ("DPMSolverMultistepScheduler", {}, "DPM++ 2M"),
    "dpm++_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, "DPM++ 2M Karras"),
    "ddim": ("DDIMScheduler", {}, "DDIM"),
    "unipc": ("UniPCMultistepScheduler", {}, "UniPC"),
    "lcm": ("LCMScheduler", {}, "LCM"),
}


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


def steps_for_strength(steps: int, strength: float) -> int:
    """The scheduler steps that make image-to-image at ``strength`` run at least one denoising step.

    diffusers runs ``int(steps * strength)`` of them, so 1 step at strength 0.85 would run none: the swap and
    face-detail passes raise the count to the smallest that runs one (what a user who asked for few steps
    means), never lower it."""
    count = max(steps, math.ceil(1 / strength))
    while int(count * strength) < 1:  # 1 / strength rounded down in floating point
        count += 1
    return count
