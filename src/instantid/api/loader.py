"""Building a ready :class:`~instantid.InstantID` from a :class:`~instantid.api.model_settings.ModelSettings`:
the one way every command, the web UI and the server load the models (quietly, checked before the slow part).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from instantid.api.generator import InstantID
from instantid.errors import InvalidInputError
from instantid.io.loading import library_chatter, pick_device
from instantid.io.models import ControlRefs

if TYPE_CHECKING:
    from instantid.api.model_settings import ModelSettings
    from instantid.faces import FaceAnalyzer


def load_model(settings: ModelSettings, analyzer: FaceAnalyzer | None = None) -> InstantID:
    """Load everything, without the libraries' loading bars and warnings unless ``settings.verbose``.
    ``analyzer``: a face analyzer already made (e.g. by a CLI that checked the photos before this slow load)."""
    with library_chatter(settings.verbose):
        return _load(settings, analyzer)


def _load(settings: ModelSettings, analyzer: FaceAnalyzer | None) -> InstantID:
    if settings.quantize is not None:  # before minutes of loading: torchao missing or no fp8 GPU is one line
        from instantid.speed.quantize import check_scheme, require_torchao

        check_scheme(settings.quantize, pick_device(settings.device))
        require_torchao(settings.quantize)

    options = {"device": settings.device, "lora": settings.lora, "analyzer": analyzer,
               "controls": settings.control_refs(), "style_adapter": settings.style_adapter}
    options = {k: v for k, v in options.items() if v is not None}
    common = {"lora_scale": settings.lora_scale, "compile": settings.compile, "quantize": settings.quantize,
              "preset": settings.preset,
              "preset_weights": settings.preset_weights, **options}
    if settings.demo:
        given = [name.replace("_", "-") for name in ("base", "identitynet", "adapter",
                                                     *ControlRefs.__dataclass_fields__) if getattr(settings, name)]
        if given:
            raise InvalidInputError(f"--demo uses its own tiny weights; drop --{', --'.join(given)}")
        dtype = {"dtype": settings.dtype} if settings.dtype else {}
        return InstantID.demo(settings.demo_cache_dir, **common, **dtype)
    return InstantID.from_pretrained(
        settings.base, settings.identitynet, settings.adapter, face_backend=settings.face_backend,
        antelopev2_root=settings.antelopev2_root, dtype=settings.dtype, cpu_offload=settings.cpu_offload, **common,
    )
