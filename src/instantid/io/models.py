"""Model references: local paths or Hub repo ids, resolved through the standard Hugging Face cache.

A reference is a local path (used as is) or a Hub repo id (downloaded once, then read from the cache; with
``HF_HUB_OFFLINE=1`` or no network only the cache is read). Whatever is missing is reported in one line that
names the reference and where the published files live.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instantid.core.style_blocks import DEFAULT_STYLE_ADAPTER, IMAGE_ENCODER_FOLDER, STYLE_FILENAMES, STYLE_SUBFOLDER
from instantid.errors import MissingWeightsError

INSTANTID_REPO = "InstantX/InstantID"
DEFAULT_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
DEFAULT_IDENTITYNET = INSTANTID_REPO  # its ControlNetModel/ folder
DEFAULT_ADAPTER = INSTANTID_REPO  # its ip-adapter.bin
IDENTITYNET_SUBFOLDER = "ControlNetModel"
ADAPTER_FILENAME = "ip-adapter.bin"
# Style reference images (InstantStyle): h94/IP-Adapter's SDXL adapter and its image encoder, the files
# resolve_style_adapter reads from a Hub id and `instantid download --style-adapter` fetches (not the .bin twins).
STYLE_PATTERNS = (f"{STYLE_SUBFOLDER}/{STYLE_FILENAMES[0]}", f"{STYLE_SUBFOLDER}/{IMAGE_ENCODER_FOLDER}/*.json",
                  f"{STYLE_SUBFOLDER}/{IMAGE_ENCODER_FOLDER}/model.safetensors")
# Full-precision weights only: the fp16 variants would double the download.
BASE_PATTERNS = ("*.json", "*.txt", "*/diffusion_pytorch_model.safetensors", "*/model.safetensors")
ANTELOPEV2_HINT = (
    "`instantid download` fetches antelopev2 (scrfd_10g_bnkps.onnx + glintr100.onnx) into the Hugging Face cache; "
    "or unpack it by hand into ~/.insightface/models/antelopev2 or a folder named by INSTANTID_ANTELOPEV2"
)
# The published demo's extra ControlNets (instantid.api.settings.CONTROL_KINDS) and the models that make their maps
# (instantid.core.control_maps; canny needs none). Full-precision safetensors only, as for the base.
DEFAULT_CONTROLNETS = {
    "pose": "thibaud/controlnet-openpose-sdxl-1.0",
    "canny": "diffusers/controlnet-canny-sdxl-1.0",
    "depth": "diffusers/controlnet-depth-sdxl-1.0-small",
}
DEFAULT_MAPPERS = {"pose": "usyd-community/vitpose-base-simple", "depth": "LiheYoung/depth-anything-large-hf"}
CONTROLNET_PATTERNS = ("config.json", "diffusion_pytorch_model.safetensors")
MAPPER_PATTERNS = ("config.json", "preprocessor_config.json", "model.safetensors")
WHERE = {
    "base": f"an SDXL base in diffusers layout, e.g. {DEFAULT_BASE}, or a single .safetensors checkpoint",
    "identitynet": f"{INSTANTID_REPO} on the Hugging Face Hub, folder {IDENTITYNET_SUBFOLDER}/",
    "adapter": f"{INSTANTID_REPO} on the Hugging Face Hub, file {ADAPTER_FILENAME}",
    **{f"{kind} ControlNet": f"{ref} on the Hugging Face Hub" for kind, ref in DEFAULT_CONTROLNETS.items()},
    **{f"{kind} map model": f"{ref} on the Hugging Face Hub" for kind, ref in DEFAULT_MAPPERS.items()},
    "style adapter": f"{DEFAULT_STYLE_ADAPTER} on the Hugging Face Hub, {STYLE_SUBFOLDER}/{STYLE_FILENAMES[0]} "
                     f"(or .bin) with {STYLE_SUBFOLDER}/{IMAGE_ENCODER_FOLDER}/",
}




@dataclass(frozen=True)
class ModelRefs:
    """The three model references InstantID needs (face model aside)."""

    base: str = DEFAULT_BASE
    identitynet: str = DEFAULT_IDENTITYNET
    adapter: str = DEFAULT_ADAPTER


@dataclass(frozen=True)
class ControlRefs:
    """Where the extra ControlNets and their map models come from (None: the published demo's)."""

    pose_controlnet: str | None = None
    canny_controlnet: str | None = None
    depth_controlnet: str | None = None
    pose_map_model: str | None = None
    depth_map_model: str | None = None

    def controlnet(self, kind: str) -> str:
        return getattr(self, f"{kind}_controlnet") or DEFAULT_CONTROLNETS[kind]

    def map_model(self, kind: str) -> str | None:
        return getattr(self, f"{kind}_map_model", None) or DEFAULT_MAPPERS.get(kind)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _missing(kind: str, ref: str, detail: str) -> MissingWeightsError:
    if kind.endswith(("ControlNet", "map model")):
        command = f"instantid download --controlnet {kind.split()[0]}"
    else:
        command = "instantid download --style-adapter" if kind == "style adapter" else "instantid download"
    return MissingWeightsError(f"{kind} '{ref}' not found ({detail}); get it from {WHERE[kind]} "
                               f"(`{command}` fetches the published one)")


def looks_like_repo_id(ref: str) -> bool:
    return ref.count("/") == 1 and not ref.startswith((".", "/", "~")) and not Path(ref).exists()


def resolve_base(ref: str, local_only: bool = False) -> Path:
    """A local SDXL folder (``model_index.json``) or single-file checkpoint for ``ref``."""
    path = Path(ref).expanduser()
    if path.exists():
        if path.is_file() and path.suffix in (".safetensors", ".ckpt"):
            return path
        if path.is_file():
            raise _missing("base", ref, "a file that is not a .safetensors or .ckpt checkpoint")
        if (path / "model_index.json").is_file():
            return path
        raise _missing("base", ref, "no model_index.json in that folder")
    if not looks_like_repo_id(ref):
        raise _missing("base", ref, "no such file or folder")
    return _snapshot("base", ref, list(BASE_PATTERNS), local_only)


def resolve_identitynet(ref: str, local_only: bool = False) -> Path:
    """A folder holding IdentityNet's ``config.json`` and weights."""
    path = Path(ref).expanduser()
    if path.exists():
        for candidate in (path, path / IDENTITYNET_SUBFOLDER):
            if (candidate / "config.json").is_file():
                return candidate
        raise _missing("identitynet", ref, f"no config.json in it or in {IDENTITYNET_SUBFOLDER}/")
    if not looks_like_repo_id(ref):
        raise _missing("identitynet", ref, "no such folder")
    root = _snapshot("identitynet", ref, [f"{IDENTITYNET_SUBFOLDER}/*"], local_only)
    folder = root / IDENTITYNET_SUBFOLDER
    if not (folder / "config.json").is_file():
        raise _missing("identitynet", ref, f"the repository has no {IDENTITYNET_SUBFOLDER}/config.json")
    return folder


def resolve_adapter(ref: str, local_only: bool = False) -> Path:
    """The face adapter file (``ip-adapter.bin`` or ``.safetensors``)."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for name in (ADAPTER_FILENAME, "ip-adapter.safetensors"):
            if (path / name).is_file():
                return path / name
        raise _missing("adapter", ref, f"no {ADAPTER_FILENAME} in that folder")
    if not looks_like_repo_id(ref):
        raise _missing("adapter", ref, "no such file")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(ref, ADAPTER_FILENAME, local_files_only=_offline() or local_only))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        raise _missing("adapter", ref, _why(exc)) from exc


def resolve_controlnet(kind: str, ref: str | None = None, local_only: bool = False) -> Path:
    """An extra ControlNet's folder (``config.json`` + weights): ``ref`` or the published demo's for ``kind``."""
    return _model_folder(f"{kind} ControlNet", ref or DEFAULT_CONTROLNETS[kind], CONTROLNET_PATTERNS, local_only)


def resolve_mapper(kind: str, ref: str | None = None, local_only: bool = False) -> Path:
    """The folder of the model that makes ``kind``'s control map (transformers layout)."""
    return _model_folder(f"{kind} map model", ref or DEFAULT_MAPPERS[kind], MAPPER_PATTERNS, local_only)


def _model_folder(kind: str, ref: str, patterns: tuple[str, ...], local_only: bool) -> Path:
    path = Path(ref).expanduser()
    if path.exists():
        if (path / "config.json").is_file():
            return path
        raise _missing(kind, ref, "no config.json in that folder")
    if not looks_like_repo_id(ref):
        raise _missing(kind, ref, "no such folder")
    folder = _snapshot(kind, ref, list(patterns), local_only)
    if not (folder / "config.json").is_file():
        raise _missing(kind, ref, "not in the Hugging Face cache")
    return folder
def resolve_style_adapter(ref: str, local_only: bool = False) -> tuple[Path, Path]:
    """The style adapter file and its image encoder folder for ``ref``: an ``ip-adapter_sdxl`` file (encoder in
    ``image_encoder/`` beside it), a folder holding them (h94's ``sdxl_models``, or a copy of the repository with
    ``sdxl_models/`` inside), or a Hub id with that repository's layout."""
    path = Path(ref).expanduser()
    if path.exists():
        if path.is_file():
            weights = path
        else:
            folders = (path, path / STYLE_SUBFOLDER)
            weights = next((f / n for f in folders for n in STYLE_FILENAMES if (f / n).is_file()), None)
            if weights is None:
                names = " or ".join(STYLE_FILENAMES)
                raise _missing("style adapter", ref, f"no {names} in it or in {STYLE_SUBFOLDER}/")
        encoder = weights.parent / IMAGE_ENCODER_FOLDER
        if not (encoder / "config.json").is_file():
            raise _missing("style adapter", ref, f"no {IMAGE_ENCODER_FOLDER}/config.json beside {weights.name}")
        return weights, encoder
    if not looks_like_repo_id(ref):
        raise _missing("style adapter", ref, "no such file or folder")
    root = _snapshot("style adapter", ref, list(STYLE_PATTERNS), local_only) / STYLE_SUBFOLDER
    if not (root / STYLE_FILENAMES[0]).is_file() or not (root / IMAGE_ENCODER_FOLDER / "config.json").is_file():
        raise _missing("style adapter", ref, f"the repository lacks {STYLE_SUBFOLDER}/{STYLE_FILENAMES[0]} or "
                                             f"{STYLE_SUBFOLDER}/{IMAGE_ENCODER_FOLDER}/")
    return root / STYLE_FILENAMES[0], root / IMAGE_ENCODER_FOLDER


def _snapshot(kind: str, ref: str, patterns: list[str], local_only: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(ref, allow_patterns=patterns, local_files_only=_offline() or local_only))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        raise _missing(kind, ref, _why(exc)) from exc


def _why(exc: Exception) -> str:
    if _offline() or isinstance(exc, _local_entry_error()):
        return "not in the Hugging Face cache and not downloadable now"
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


def _local_entry_error() -> type[Exception]:
    from huggingface_hub.errors import LocalEntryNotFoundError

    return LocalEntryNotFoundError


def describe(refs: ModelRefs) -> list[tuple[str, str, str | None, str | None]]:
    """For ``instantid doctor``: (kind, reference, resolved path or None, problem or None) per model.
    Looks only at local files and the cache; downloads nothing."""
    rows = []
    for kind, resolve in (("base", resolve_base), ("identitynet", resolve_identitynet), ("adapter", resolve_adapter)):
        ref = getattr(refs, kind)
        try:
            rows.append((kind, ref, str(resolve(ref, local_only=True)), None))
        except MissingWeightsError as exc:
            rows.append((kind, ref, None, str(exc)))
    return rows


def public_ref(ref: Any) -> Any:
    """A model reference as a stranger may see it (image metadata, the server's answers): a Hub id as is, a
    local file or folder by its name only (paths tell about the user's disk and cache layout)."""
    if not isinstance(ref, str) or not ref:
        return ref
    path = Path(ref).expanduser()
    if ref.count("/") == 1 and not ref.startswith((".", "/", "~")) and not path.exists():
        return ref  # owner/name on the Hub
    return path.name or ref
