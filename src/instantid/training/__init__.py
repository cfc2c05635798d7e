"""Training InstantID (paper section 3.4; the published release has no training code).

``prepare`` turns captioned photos into a training set (face analysis + filters), ``trainer`` trains the face
adapter and IdentityNet on a frozen SDXL with HF accelerate, ``export`` writes the published file layout.
"""

from instantid.training.config import TrainConfig, parse_args
from instantid.training.export import adapter_state_dict, export_release, resampler_to_published, save_adapter

__all__ = [
    "TrainConfig", "adapter_state_dict", "export_release", "parse_args", "resampler_to_published", "save_adapter",
]
