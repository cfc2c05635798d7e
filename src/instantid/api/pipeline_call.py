"""What a generation's settings become in one pipeline call: seeds, their generators, strengths, windows.

Apart from :class:`~instantid.api.generator.InstantID` so the mapping from the settings schema to the pipeline's
keyword arguments is one readable table (the published pipeline's names on the left).
"""

from __future__ import annotations

import random
from typing import Any

import torch

from instantid.api.results import Progress
from instantid.api.settings import MAX_SEED, GenerationSettings


def call_seeds(settings: GenerationSettings) -> list[int]:
    """One seed per image: the settings' seed (random when unset) and the ones after it."""
    seed = settings.seed if settings.seed is not None else random.randint(0, MAX_SEED)
    return [(seed + i) % (MAX_SEED + 1) for i in range(settings.num_images)]


def settings_arguments(settings: GenerationSettings, seeds: list[int], device: torch.device,
                       progress: Progress | None = None, eta: float | None = None) -> dict[str, Any]:
    """The pipeline keyword arguments ``settings`` decide, with one seeded generator per image on ``device``
    (on the CPU for Apple's mps, whose generators diffusers does not take) and ``progress`` called per step."""
    gen_device = "cpu" if device.type == "mps" else device

    def on_step(step_pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
        if progress is not None:
            progress(step + 1, step_pipe.num_timesteps)
        return tensors

    return {
        "controlnet_conditioning_scale": settings.identitynet_strength,
        "ip_adapter_scale": settings.adapter_strength, "num_inference_steps": settings.steps,
        "guidance_scale": settings.guidance_scale, "num_images_per_prompt": settings.num_images,
        "control_guidance_start": settings.control_guidance_start,
        "control_guidance_end": settings.control_guidance_end,
        "controlnet_cache_interval": settings.identitynet_cache_interval,
        "generator": [torch.Generator(gen_device).manual_seed(s) for s in seeds], "callback_on_step_end": on_step,
        **({"eta": eta} if eta is not None else {}),
    }
