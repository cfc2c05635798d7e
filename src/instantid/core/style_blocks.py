"""InstantStyle's UNet blocks (Wang et al. 2024), as diffusers' ``set_ip_adapter_scale`` takes them: in SDXL the
style (colours, textures, strokes) enters through ``up_blocks.0.attentions.1`` and the spatial layout through
``down_blocks.2.attentions.1``. Plain data with no torch, so the settings and the CLI can name the choices."""

from __future__ import annotations

import copy
from typing import Any

# The published style adapter (h94/IP-Adapter, SDXL): where its weights and image encoder are.
DEFAULT_STYLE_ADAPTER = "h94/IP-Adapter"
STYLE_SUBFOLDER = "sdxl_models"
STYLE_FILENAMES = ("ip-adapter_sdxl.safetensors", "ip-adapter_sdxl.bin")
IMAGE_ENCODER_FOLDER = "image_encoder"
STYLE_WHERE = (f"the published one is {DEFAULT_STYLE_ADAPTER} on the Hugging Face Hub, {STYLE_SUBFOLDER}/"
               f"{STYLE_FILENAMES[0]} (or .bin) with {STYLE_SUBFOLDER}/{IMAGE_ENCODER_FOLDER}/")

STYLE_BLOCK: dict[str, Any] = {"up": {"block_0": [0.0, 1.0, 0.0]}}  # a 1.0 marks the attention that is used
LAYOUT_BLOCK: dict[str, Any] = {"down": {"block_2": [0.0, 1.0]}}
STYLE_BLOCKS: dict[str, dict[str, Any]] = {"style": STYLE_BLOCK, "style+layout": {**LAYOUT_BLOCK, **STYLE_BLOCK}}


def block_scales(blocks: str, strength: float) -> dict[str, Any]:
    """InstantStyle's ``blocks`` ("style" or "style+layout") at ``strength``, in set_ip_adapter_scale's format."""
    from instantid.errors import InvalidInputError

    if blocks not in STYLE_BLOCKS:
        raise InvalidInputError(f"unknown style blocks {blocks!r}; choose {', '.join(STYLE_BLOCKS)}")
    scaled = copy.deepcopy(STYLE_BLOCKS[blocks])
    for side in scaled.values():
        for name, values in side.items():
            side[name] = [v * strength for v in values]
    return scaled
