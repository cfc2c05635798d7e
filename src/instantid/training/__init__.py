"""Training InstantID (paper section 3.4; the published release has no training code).

``prepare`` turns captioned photos into a training set (face analysis + filters), ``trainer`` trains the face
adapter and IdentityNet on a frozen SDXL with HF accelerate, ``export`` writes the published file layout.
"""

from __future__ import annotations

import importlib
from typing import Any

# Lazy: ``export`` imports diffusers, and every ``instantid prepare`` process would pay for it at start-up.
_LAZY = {
    "TrainConfig": "instantid.training.config", "parse_args": "instantid.training.config",
    "adapter_state_dict": "instantid.training.export", "export_release": "instantid.training.export",
    "resampler_to_published": "instantid.training.export", "save_adapter": "instantid.training.export",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'instantid.training' has no attribute {name!r}")


__all__ = [
    "TrainConfig", "adapter_state_dict", "export_release", "parse_args", "resampler_to_published", "save_adapter",
]
