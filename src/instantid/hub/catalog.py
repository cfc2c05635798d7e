"""What ``instantid download`` fetches: each model's Hub repository, the files the loaders read, its licence,
and the SHA-256 of published files where the real digest is known from public sources.

The file patterns are the loaders' own (:mod:`instantid.io.models`, :mod:`instantid.speed.presets`), so a download
leaves exactly what ``generate`` later finds in the Hugging Face cache, and nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from instantid.faces.antelopev2 import (
    DETECTOR_FILE,
    RECOGNIZER_FILE,
    antelopev2_repo,
)
from instantid.io.models import (
    ADAPTER_FILENAME,
    BASE_PATTERNS,
    CONTROLNET_PATTERNS,
    DEFAULT_BASE,
    DEFAULT_STYLE_ADAPTER,
    IDENTITYNET_SUBFOLDER,
    INSTANTID_REPO,
    MAPPER_PATTERNS,
    STYLE_PATTERNS,
    ControlRefs,
)

# SHA-256 of insightface's antelopev2.zip members (release v0.7), as pinned independently by several public
# installers (ComfyUI node managers, PuLID installers). A mirror serving other bytes is refused.
ANTELOPEV2_SHA256 = {
    DETECTOR_FILE: "5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91",
    RECOGNIZER_FILE: "4ab1d6435d639628a6f3e5008dd4f929edf4c4124b1a7169e1048f9fef534cdf",
}


@dataclass(frozen=True)
class Licence:
    name: str
    url: str
    terms: str  # the one sentence a user needs before saying yes


SDXL_LICENCE = Licence(
    "CreativeML Open RAIL++-M",
    f"https://huggingface.co/{DEFAULT_BASE}/blob/main/LICENSE.md",
    "open weights, commercial use allowed, with use-based restrictions (no unlawful, harmful or deceptive uses) "
    "that you must pass on to anyone you share the weights or outputs with",
)
INSTANTID_LICENCE = Licence(
    "Apache-2.0",
    f"https://huggingface.co/{INSTANTID_REPO}",
    "the InstantID checkpoints (IdentityNet, face adapter) are Apache-2.0 per their model card; the face model "
    "whose embeddings they take (antelopev2) has its own terms",
)
ANTELOPEV2_LICENCE = Licence(
    "insightface pretrained models: non-commercial research only",
    "https://github.com/deepinsight/insightface#license",
    "insightface's pretrained models, antelopev2 included, are for non-commercial research purposes only; "
    "commercial use needs a licence from insightface (the offline dlib face model has no such terms)",
)


@dataclass(frozen=True)
class HubModel:
    """One model to fetch: a repository, the files the loader reads from it, and its terms."""

    key: str  # how the CLI names it: base, instantid, antelopev2, preset:<name>, controlnet:<kind>,
    # map:<kind>, style-adapter
    title: str
    repo: str
    patterns: tuple[str, ...]  # huggingface_hub allow_patterns, as the loader passes them
    licence: Licence | None  # None: the licence tag on the repository's model card, read at plan time
    pinned: dict[str, str] = field(default_factory=dict)  # file -> SHA-256 of the published file


def default_models(base: str = DEFAULT_BASE, antelopev2: str | None = None) -> list[HubModel]:
    """What real generation needs: the SDXL base, InstantID's two checkpoints and the antelopev2 face model."""
    return [
        HubModel("base", "SDXL base", base, BASE_PATTERNS, SDXL_LICENCE if base == DEFAULT_BASE else None),
        HubModel("instantid", "InstantID (IdentityNet + face adapter)", INSTANTID_REPO,
                 (f"{IDENTITYNET_SUBFOLDER}/*", ADAPTER_FILENAME), INSTANTID_LICENCE),
        HubModel("antelopev2", "antelopev2 face detector + recogniser", antelopev2_repo(antelopev2),
                 (DETECTOR_FILE, RECOGNIZER_FILE), ANTELOPEV2_LICENCE, dict(ANTELOPEV2_SHA256)),
    ]


def preset_model(name: str) -> HubModel:
    """A few-step preset's weight file (:data:`instantid.speed.presets.PRESETS`); its licence is its model card's."""
    from instantid.speed.presets import get_preset

    preset = get_preset(name)
    return HubModel(f"preset:{preset.name}", f"few-step preset {preset.name}", preset.repo, (preset.weight_name,),
                    None)


def controlnet_models(kind: str, refs: ControlRefs | None = None) -> list[HubModel]:
    """An extra ControlNet (pose, canny, depth) and the model that makes its map (none for canny), with the
    loaders' own file patterns; their licences are their model cards' (depth-anything-large's card, for one, says
    non-commercial: read what the plan shows)."""
    refs = refs or ControlRefs()
    models = [HubModel(f"controlnet:{kind}", f"{kind} ControlNet", refs.controlnet(kind), CONTROLNET_PATTERNS, None)]
    map_model = refs.map_model(kind)
    if map_model is not None:
        models.append(HubModel(f"map:{kind}", f"{kind} map model", map_model, MAPPER_PATTERNS, None))
    return models


def style_adapter_model() -> HubModel:
    """The style adapter for style reference images (InstantStyle): h94/IP-Adapter's SDXL adapter and its CLIP
    image encoder, exactly the files :func:`instantid.io.models.resolve_style_adapter` reads (not the ``.bin``
    twins, nor the repository's other adapters); its licence is its model card's."""
    return HubModel("style-adapter", "style adapter (IP-Adapter SDXL + image encoder)", DEFAULT_STYLE_ADAPTER,
                    STYLE_PATTERNS, None)
