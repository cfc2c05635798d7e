"""Model references: local paths or Hub repo ids, resolved through the standard Hugging Face cache.

A reference is a local path (used as is) or a Hub repo id (downloaded once, then read from the cache; with
``HF_HUB_OFFLINE=1`` or no network only the cache is read). Whatever is missing is reported in one line that
names the reference and where the published files live.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from instantid.errors import MissingWeightsError

INSTANTID_REPO = "InstantX/InstantID"
DEFAULT_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
DEFAULT_IDENTITYNET = INSTANTID_REPO  # its ControlNetModel/ folder
DEFAULT_ADAPTER = INSTANTID_REPO  # its ip-adapter.bin
IDENTITYNET_SUBFOLDER = "ControlNetModel"
ADAPTER_FILENAME = "ip-adapter.bin"
# Style reference images (InstantStyle): h94/IP-Adapter's SDXL adapter and its image encoder.
DEFAULT_STYLE_ADAPTER = "h94/IP-Adapter"
STYLE_SUBFOLDER = "sdxl_models"
STYLE_FILENAMES = ("ip-adapter_sdxl.safetensors", "ip-adapter_sdxl.bin")
IMAGE_ENCODER_FOLDER = "image_encoder"
# Full-precision weights only: the fp16 variants would double the download.
BASE_PATTERNS = ("*.json", "*.txt", "*/diffusion_pytorch_model.safetensors", "*/model.safetensors")
ANTELOPEV2_HINT = (
    "`instantid download` fetches antelopev2 (scrfd_10g_bnkps.onnx + glintr100.onnx) into the Hugging Face cache; "
    "or unpack it by hand into ~/.insightface/models/antelopev2 or a folder named by INSTANTID_ANTELOPEV2"
)
WHERE = {
    "base": f"an SDXL base in diffusers layout, e.g. {DEFAULT_BASE}, or a single .safetensors checkpoint",
    "identitynet": f"{INSTANTID_REPO} on the Hugging Face Hub, folder {IDENTITYNET_SUBFOLDER}/",
    "adapter": f"{INSTANTID_REPO} on the Hugging Face Hub, file {ADAPTER_FILENAME}",
    "style adapter": f"{DEFAULT_STYLE_ADAPTER} on the Hugging Face Hub, {STYLE_SUBFOLDER}/{STYLE_FILENAMES[0]} "
                     f"(or .bin) with {STYLE_SUBFOLDER}/{IMAGE_ENCODER_FOLDER}/",
}


DOWNLOADED = ("base", "identitynet", "adapter")  # what `instantid download` fetches


@dataclass(frozen=True)
class ModelRefs:
    """The three model references InstantID needs (face model aside)."""

    base: str = DEFAULT_BASE
    identitynet: str = DEFAULT_IDENTITYNET
    adapter: str = DEFAULT_ADAPTER


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _missing(kind: str, ref: str, detail: str) -> MissingWeightsError:
    fetch = " (`instantid download` fetches the published one)" if kind in DOWNLOADED else ""
    return MissingWeightsError(f"{kind} '{ref}' not found ({detail}); get it from {WHERE[kind]}{fetch}")


def _looks_like_repo_id(ref: str) -> bool:
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
    if not _looks_like_repo_id(ref):
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
    if not _looks_like_repo_id(ref):
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
    if not _looks_like_repo_id(ref):
        raise _missing("adapter", ref, "no such file")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(ref, ADAPTER_FILENAME, local_files_only=_offline() or local_only))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        raise _missing("adapter", ref, _why(exc)) from exc


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
    if not _looks_like_repo_id(ref):
        raise _missing("style adapter", ref, "no such file or folder")
    patterns = [f"{STYLE_SUBFOLDER}/{STYLE_FILENAMES[0]}", f"{STYLE_SUBFOLDER}/{IMAGE_ENCODER_FOLDER}/*.json",
                f"{STYLE_SUBFOLDER}/{IMAGE_ENCODER_FOLDER}/model.safetensors"]
    root = _snapshot("style adapter", ref, patterns, local_only) / STYLE_SUBFOLDER
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
