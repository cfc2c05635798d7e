"""Where the node pack finds its files: ComfyUI's own path registry (``folder_paths``).

``models/instantid`` holds the face adapter (``ip-adapter.bin`` or a ``.safetensors`` export),
``models/controlnet`` IdentityNet (ComfyUI's usual ControlNet folder), and ``models/insightface`` the
antelopev2 face model, as the existing InstantID pack lays it out (``models/insightface/models/antelopev2``);
``extra_model_paths.yaml`` entries for these names are honoured like any other ComfyUI folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from instantid.errors import MissingWeightsError
from instantid.faces.antelopev2 import DETECTOR_FILE, RECOGNIZER_FILE, find_antelopev2

ADAPTERS = "instantid"
INSIGHTFACE = "insightface"
CONTROLNETS = "controlnet"
ADAPTER_SUFFIXES = {".bin", ".safetensors", ".pt", ".pth"}


def register_model_folders() -> None:
    """Add ``models/instantid`` and ``models/insightface`` to ComfyUI's registry (``controlnet`` is built in);
    folders already registered (e.g. by another InstantID pack) are kept."""
    for name, suffixes in ((ADAPTERS, ADAPTER_SUFFIXES), (INSIGHTFACE, set())):
        folder = os.path.join(folder_paths.models_dir, name)
        if name not in folder_paths.folder_names_and_paths:
            folder_paths.folder_names_and_paths[name] = ([folder], set(suffixes))
        elif suffixes:
            folder_paths.folder_names_and_paths[name][1].update(suffixes)


def adapter_files() -> list[str]:
    return folder_paths.get_filename_list(ADAPTERS)


def full_path(folder: str, name: str) -> Path:
    """A listed file's path; MissingWeightsError in one line when it is gone."""
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        searched = ", ".join(folder_paths.get_folder_paths(folder))
        raise MissingWeightsError(f"{name} not found in the {folder} model folders ({searched})")
    return Path(path)


def find_antelopev2_folder() -> Path | None:
    """The antelopev2 folder under a registered insightface folder (``<dir>/models/antelopev2`` as the existing
    pack expects it, or ``<dir>/antelopev2``, nested or not), else None."""
    for base in folder_paths.get_folder_paths(INSIGHTFACE):
        for root in (Path(base) / "models", Path(base)):
            found = find_antelopev2(root)
            if found is not None:
                return found
    return None


def require_antelopev2_folder() -> Path:
    found = find_antelopev2_folder()
    if found is None:
        searched = ", ".join(f"{b}/models/antelopev2" for b in folder_paths.get_folder_paths(INSIGHTFACE))
        raise MissingWeightsError(
            f"antelopev2 face model not found: put {DETECTOR_FILE} and {RECOGNIZER_FILE} in {searched}, or choose "
            "the dlib backend"
        )
    return found
